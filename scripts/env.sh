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
stamp="$VENV/.deps-$( (cat pyproject.toml scripts/env.sh; echo "${EXTRA_PIP:-}") | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q "maturin>=1.5,<2" "pytest>=7" psutil ruff ${EXTRA_PIP:-}
    touch "$stamp"
fi
build() {
    local flags=()
    [ "${BUILD:-debug}" = release ] && flags+=(--release)
    (source "$VENV/bin/activate" && maturin develop -q --skip-install "${flags[@]}" 2>&1 | grep -v "^📦\|^🔗\|^🐍\|^📡\|^🛠\|^✏️" || true)
    # --skip-install leaves the freshly built module in python/weaveloop; make it importable.
    "$PY" - <<PYEOF
import pathlib, site
pth = pathlib.Path(site.getsitepackages()[0]) / "weaveloop-dev.pth"
pth.write_text("$ROOT/python\n")
PYEOF
    "$PY" -c "import weaveloop._core" || { echo "weaveloop failed to build" >&2; exit 1; }
}
