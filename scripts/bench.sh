#!/usr/bin/env bash
# Release build, then the side-by-side benchmark (stock asyncio, uvloop, rloop, weaveloop).
EXTRA_PIP="uvloop rloop matplotlib aiologic janus culsans" source "$(dirname "$0")/env.sh"
BUILD=release build
exec "$PY" -m weaveloop.bench "$@"
