#!/usr/bin/env bash
# Builds weaveloop (release) and runs its demo: the five rules of DESIGN.md on weaveloop,
# with a short side-by-side against the stock asyncio loop.
source "$(dirname "$0")/env.sh"
BUILD=release build
exec "$PY" -m weaveloop.demo "$@"
