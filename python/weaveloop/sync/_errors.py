"""Exceptions of weaveloop.sync, each catchable by both worlds' except clauses.

Invariant: every class derives from the threading/queue exception *and* the asyncio one
it stands for, so existing ``except queue.Empty`` and ``except asyncio.QueueEmpty``
clauses both keep working.
"""

from __future__ import annotations

import asyncio
import queue
import threading

__all__ = ["BrokenBarrierError", "QueueEmpty", "QueueFull", "QueueShutDown"]


class QueueEmpty(queue.Empty, asyncio.QueueEmpty):
    """Raised by ``get_nowait()`` (and a timed-out ``get``) on an empty queue."""


class QueueFull(queue.Full, asyncio.QueueFull):
    """Raised by ``put_nowait()`` (and a timed-out ``put``) on a full queue."""


# queue.ShutDown and asyncio.QueueShutDown are new in Python 3.13; weaveloop.sync queues
# can be shut down on every version, and their exception derives from those that exist.
_SHUT_DOWN_BASES = tuple(
    cls
    for cls in (getattr(queue, "ShutDown", None), getattr(asyncio, "QueueShutDown", None))
    if cls is not None
) or (Exception,)


class QueueShutDown(*_SHUT_DOWN_BASES):  # type: ignore[misc]
    """Raised by puts on a shut-down queue, and by gets once it is also empty."""


class BrokenBarrierError(threading.BrokenBarrierError, asyncio.BrokenBarrierError):
    """Raised when a Barrier is broken or reset while a thread or coroutine waits."""
