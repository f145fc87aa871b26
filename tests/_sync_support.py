"""Helpers for the weaveloop.sync tests: the loops every test runs on (stock asyncio,
uvloop when installed, weaveloop) and loops running in worker threads.

Every timeout here is a safety net: reaching one fails the test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import threading

from _support import SAFETY, join_or_fail, start_thread, wait_or_fail, weaveloop_factory


def _uvloop_factory():
    import uvloop

    return uvloop.new_event_loop()


SYNC_LOOPS = {"asyncio": asyncio.SelectorEventLoop, "weaveloop": weaveloop_factory}
if importlib.util.find_spec("uvloop") is not None:
    SYNC_LOOPS["uvloop"] = _uvloop_factory


def run(factory, coro_fn, *args):
    """Runs ``coro_fn(*args)`` to completion on a fresh loop from ``factory``."""

    async def guarded():
        return await asyncio.wait_for(coro_fn(*args), SAFETY)

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(guarded())


class ThreadLoop:
    """A loop of ``factory`` running forever in its own thread; ``submit`` runs a
    coroutine there and returns a concurrent.futures.Future."""

    def __init__(self, factory) -> None:
        self.loop = factory()
        started = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(started,), daemon=True)
        self.thread.start()
        if not started.wait(SAFETY):
            raise RuntimeError("loop thread did not start")

    def _main(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(SAFETY)
            self.loop.close()


def wait_until(predicate, what: str) -> None:
    """Waits (yielding the GIL) until ``predicate()`` holds; a safety net, not a sleep."""
    import time

    deadline = time.monotonic() + SAFETY
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out (safety net) waiting for {what}")
        time.sleep(0.0005)


class HeldByAThread:
    """A thread that holds ``lock`` (``with lock:``) from ``start()`` until ``release()``."""

    def __init__(self, lock) -> None:
        self._lock = lock
        self._held = threading.Event()
        self._release = threading.Event()
        self._thread: threading.Thread | None = None

    def _hold(self) -> None:
        with self._lock:
            self._held.set()
            self._release.wait(SAFETY)

    def start(self) -> HeldByAThread:
        self._thread = start_thread(self._hold)
        wait_or_fail(self._held, "the thread to hold the lock")
        return self

    def release(self) -> None:
        self._release.set()
        join_or_fail(self._thread)


def call_outcome(call) -> tuple:
    """("returned", what `call()` returned), or the name and message of the exception it
    raised: one entry of a transcript compared with the stdlib's."""
    try:
        return ("returned", call())
    except Exception as e:
        return (type(e).__name__, str(e))
