"""weaveloop: a drop-in asyncio event loop in Rust, for coroutines and threads together.

``weaveloop.run(main())`` or ``asyncio.Runner(loop_factory=weaveloop.new_event_loop)``.
"""

from __future__ import annotations

import asyncio

from . import sync
from ._executor import BrokenThreadPool, ThreadPoolExecutor
from ._loop import LOOP_OPTIONS, Loop, _validate_options, new_event_loop

__all__ = [
    "BrokenThreadPool",
    "EventLoop",
    "EventLoopPolicy",
    "LOOP_OPTIONS",
    "Loop",
    "ThreadPoolExecutor",
    "install",
    "new_event_loop",
    "run",
    "sync",
]

__version__ = "0.1.0"

#: The loop class under the name Python 3.13 gives its own (``asyncio.EventLoop``):
#: ``asyncio.run(main(), loop_factory=weaveloop.EventLoop)``.
EventLoop = Loop


def run(main, *, debug=None, **loop_options):
    """Run coroutine ``main`` on a new weaveloop loop, like ``asyncio.run``.

    ``loop_options`` are validated up front: an unknown one is a ``TypeError``.
    """
    _validate_options(loop_options)
    if asyncio.events._get_running_loop() is not None:
        # Like asyncio.run: refused before a second loop is created.
        raise RuntimeError("weaveloop.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=lambda: new_event_loop(**loop_options)) as r:
        # As asyncio.run (a Runner with no loop factory): the loop is the thread's current
        # event loop while it exists, which the policy's get_event_loop() returns and a
        # child watcher is attached to; the Runner unsets it just before closing the loop.
        asyncio.set_event_loop(r.get_loop())
        r._set_event_loop = True
        return r.run(main)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """Policy whose ``new_event_loop`` makes weaveloop loops (``options`` passed on)."""

    def __init__(self, **loop_options) -> None:
        super().__init__()
        _validate_options(loop_options)
        self._loop_options = loop_options

    def _loop_factory(self):
        return new_event_loop(**self._loop_options)


def install(**loop_options) -> None:
    """Make weaveloop the loop of ``asyncio.new_event_loop()`` and ``asyncio.run()``."""
    asyncio.set_event_loop_policy(EventLoopPolicy(**loop_options))
