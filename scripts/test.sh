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
echo "== build"
build
echo "== conformance (CPython test.test_asyncio against weaveloop)"
"$PY" tests/conformance/run.py
echo "== conformance (CPython test.lock_tests / test.test_queue against weaveloop.sync)"
"$PY" tests/conformance/sync_run.py
echo "== pytest"
"$PY" -m pytest -q -p no:cacheprovider tests
