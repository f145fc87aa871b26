# Sourced by the other scripts: a project-local virtualenv with the build and test tools,
# and weaveloop built into it. BUILD=release for an optimised build (benchmarks, demo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
# What the tests need, in every virtualenv they run in (ruff only in this one).
TEST_DEPS=("pytest>=7" psutil uvloop nest_asyncio)
stamp="$VENV/.deps-$( (cat pyproject.toml scripts/env.sh; echo "${EXTRA_PIP:-}") | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "${TEST_DEPS[@]}" ruff ${EXTRA_PIP:-}
    touch "$stamp"
fi
# One cargo build at a time on this machine, across worktrees.
cargo_locked() {
    if command -v flock >/dev/null; then
        flock /tmp/weaveloop-cargo.lock cargo "$@"
    else
        cargo "$@"
    fi
}
build() {
    build_for "$PY" "$ROOT/target"
}
# build_for PYTHON TARGET_DIR: the extension for that interpreter, put in place next to
# the others (each version's module has its own file name), importable from its venv.
build_for() {
    # cargo directly (not `maturin develop`): the new module is renamed into place, so
    # processes still running the old one keep a valid mapping of it.
    local py="$1" target="$2" profile=debug flags=()
    if [ "${BUILD:-debug}" = release ]; then profile=release; flags+=(--release); fi
    PYO3_PYTHON="$py" PYO3_BUILD_EXTENSION_MODULE=1 CARGO_TARGET_DIR="$target" \
        cargo_locked build -q --lib "${flags[@]}"
    local suffix
    suffix="$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
    cp "$target/$profile/lib_core.so" "python/weaveloop/._core.so.tmp"
    mv -f "python/weaveloop/._core.so.tmp" "python/weaveloop/_core$suffix"
    # Make the in-tree package importable from the virtualenv.
    "$py" -c 'import pathlib, site, sys; (pathlib.Path(site.getsitepackages()[0]) / "weaveloop-dev.pth").write_text(sys.argv[1] + "\n")' "$ROOT/python"
    "$py" -c "import weaveloop._core" || { echo "weaveloop failed to build" >&2; exit 1; }
}
# other_python VERSION: an interpreter of that version on this machine (on PATH, or
# installed by pyenv), or nothing.
other_python() {
    local v="$1"
    local candidates=("python$v")
    if command -v pyenv >/dev/null; then
        candidates+=("$(pyenv root)"/versions/"$v".*/bin/"python$v")
    fi
    local c
    for c in "${candidates[@]}"; do
        if "$c" -c 'import sys' >/dev/null 2>&1; then
            echo "$c"
            return
        fi
    done
}
