"""The event loops under comparison: how to import each and make a fresh loop.

Each loop keeps its own default executor (that is part of what is compared); a
workload may ask for a given number of executor workers, which weaveloop gets as
its ``executor_workers`` option and the others as a stdlib ``ThreadPoolExecutor``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
from collections.abc import Callable

#: Display order; uvloop is the baseline every ratio is taken against.
LOOPS = ("asyncio", "uvloop", "rloop", "weaveloop")
BASELINE = "uvloop"

_MODULES = {"asyncio": "asyncio", "uvloop": "uvloop", "rloop": "rloop", "weaveloop": "weaveloop"}


def unavailable(name: str) -> str | None:
    """None if loop ``name`` can be imported here, else why not."""
    if name not in _MODULES:
        return f"unknown loop {name!r} (known: {', '.join(LOOPS)})"
    try:
        module = importlib.import_module(_MODULES[name])
        if name == "weaveloop":
            importlib.import_module("weaveloop._core")
        module.new_event_loop  # noqa: B018 - the factory must exist
    except Exception as exc:  # any import failure means "not here"
        return f"not importable: {type(exc).__name__}: {exc}"
    return None


def factory(
    name: str, executor_workers: int | None = None
) -> Callable[[], asyncio.AbstractEventLoop]:
    """A zero-argument loop factory for ``asyncio.Runner``."""
    module = importlib.import_module(_MODULES[name])

    def make() -> asyncio.AbstractEventLoop:
        if name == "weaveloop":
            options = {} if executor_workers is None else {"executor_workers": executor_workers}
            return module.new_event_loop(**options)
        loop = module.new_event_loop()
        if executor_workers is not None:
            loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(executor_workers))
        return loop

    return make


def version(name: str) -> str | None:
    """The installed version of loop ``name`` (None if unknown)."""
    if name == "asyncio":
        import platform

        return platform.python_version()
    try:
        from importlib.metadata import version as dist_version

        return dist_version(name)
    except Exception:  # e.g. weaveloop used from a source tree, not pip-installed
        return getattr(importlib.import_module(_MODULES[name]), "__version__", None)
