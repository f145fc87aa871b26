#!/usr/bin/env bash
# Builds weaveloop and runs every test: lints, Rust engine tests (with the loom model
# check), pytest, and CPython's test_asyncio conformance suite against weaveloop.
source "$(dirname "$0")/env.sh"
echo "== lint"
cargo fmt --all -- --check
cargo clippy -q --workspace --all-targets -- -D warnings
"$VENV/bin/ruff" check -q python tests
"$VENV/bin/ruff" format -q --check python tests
echo "== rust engine tests"
cargo test -q -p weaveloop-engine
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR="$ROOT/target/loom" \
    cargo test -q -p weaveloop-engine --release --lib loom
# suites PYTHON: the conformance runners and pytest on that interpreter.
suites() {
    local py="$1"
    echo "== conformance (CPython test.test_asyncio against weaveloop)"
    "$py" tests/conformance/run.py
    echo "== conformance (CPython test.lock_tests / test.test_queue against weaveloop.sync)"
    "$py" tests/conformance/sync_run.py
    echo "== conformance (CPython test.test_concurrent_futures against weaveloop.ThreadPoolExecutor)"
    "$py" tests/conformance/pool_run.py
    echo "== pytest"
    "$py" -m pytest -q -p no:cacheprovider tests
}
echo "== build"
build
suites "$PY"
# The other supported Pythons this machine has: the extension built for each, then the
# same suites on it.
main_version="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
for v in 3.11 3.12 3.13; do
    [ "$v" = "$main_version" ] && continue
    exe="$(other_python "$v")"
    if [ -z "$exe" ]; then
        echo "== Python $v: not on this machine, skipped"
        continue
    fi
    echo "== Python $v ($exe)"
    venv="$ROOT/.venv-$v"
    [ -x "$venv/bin/python" ] || "$exe" -m venv "$venv"
    if [ ! -f "$venv/.deps" ]; then
        "$venv/bin/python" -m pip install -q "${TEST_DEPS[@]}"
        touch "$venv/.deps"
    fi
    build_for "$venv/bin/python" "$ROOT/target/py$v"
    suites "$venv/bin/python"
done
