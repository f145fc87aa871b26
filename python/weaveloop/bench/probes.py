"""Measuring instruments shared by workloads: a periodic lateness timer and threads
whose outcome comes back to the loop as a future.

Invariant: probes only use the public, thread-safe asyncio API from foreign threads
(``call_soon_threadsafe``), so they run on a loop with strict thread checks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from time import perf_counter
from typing import Any


def periodic_lateness(
    loop: asyncio.AbstractEventLoop, period: float, deadline: float
) -> asyncio.Future:
    """Run a ``period``-second timer until ``deadline`` (a ``perf_counter`` time);
    resolve to its lateness samples in seconds.

    Each tick re-arms with ``call_later(period)`` from the moment it ran and records
    how late it ran against its due time, so lateness never accumulates across ticks
    (the classic loop-lag probe). The tick due before ``deadline`` is always waited
    for, however late it comes: a stalled loop shows as a huge sample, not as none.
    """
    done = loop.create_future()
    samples: list[float] = []
    due = perf_counter() + period

    def tick() -> None:
        nonlocal due
        now = perf_counter()
        samples.append(now - due)
        if now >= deadline:
            done.set_result(samples)
            return
        due = now + period
        loop.call_later(period, tick)

    loop.call_later(period, tick)
    return done


def in_thread(
    loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any, name: str = "bench"
) -> asyncio.Future:
    """Run ``fn(*args)`` in a new daemon thread; its result or exception lands in a future.

    Daemon, so a wedged loop under test cannot keep the worker process alive.
    """
    done = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if done.done():
            return
        if ok:
            done.set_result(value)
        else:
            done.set_exception(value)

    def body() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:  # reported to the loop, which re-raises it
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=body, name=name, daemon=True).start()
    return done
