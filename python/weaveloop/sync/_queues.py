"""Queue, LifoQueue, PriorityQueue and SimpleQueue shared by threads and coroutines.

The queue object is the queue.Queue face (pass it to code expecting queue.Queue);
``q.aio`` (alias ``q.async_q``, janus's name) is the asyncio.Queue face, and
``q.sync_q`` is the queue itself. Both faces move items through one Rust core whose
getters and putters, threads and coroutines alike, are served FIFO.
Invariant: the async face's fast path is one Rust call; it waits only when it must.
``shutdown()`` (Python 3.13's Queue.shutdown, on every version) ends both faces at once:
puts raise QueueShutDown, gets too once the queue is empty.
"""

from __future__ import annotations

import math
import sys
import types
from typing import Any

from .._core import QueueCore
from ._waiting import wait_granted

__all__ = ["LifoQueue", "PriorityQueue", "Queue", "SimpleQueue"]

_EMPTY: Any = object()
_set_capacity = QueueCore.maxsize.__set__


class AsyncQueue:
    """asyncio.Queue face of a weaveloop.sync queue (same items, same counters)."""

    __slots__ = ("_q", "_try_get", "_try_put")

    def __init__(self, q: Queue) -> None:
        self._q = q
        self._try_get = q._try_get
        self._try_put = q._try_put

    async def get(self) -> Any:
        item = self._try_get(_EMPTY)
        if item is _EMPTY:
            q = self._q
            await wait_granted(q._enqueue_get, q._abandon_get)
            item = q._finish_get()
        return item

    async def put(self, item: Any) -> None:
        if not self._try_put(item):
            q = self._q
            await wait_granted(q._enqueue_put, q._abandon_put)
            q._finish_put(item)

    async def join(self) -> None:
        q = self._q
        await wait_granted(q._enqueue_join, q._abandon_join)

    def get_nowait(self) -> Any:
        return self._q.get_nowait()

    def put_nowait(self, item: Any) -> None:
        self._q.put_nowait(item)

    def task_done(self) -> None:
        self._q.task_done()

    def qsize(self) -> int:
        return self._q.qsize()

    def empty(self) -> bool:
        return self._q.empty()

    def full(self) -> bool:
        return self._q.full()

    def shutdown(self, immediate: bool = False) -> None:
        # asyncio.Queue's API, a SimpleQueue's face included (queue.SimpleQueue itself
        # has no shutdown).
        self._q._shutdown(bool(immediate))

    @property
    def maxsize(self) -> int:
        return self._q.maxsize

    def __repr__(self) -> str:
        return f"<asyncio face of {self._q!r}>"


def _capacity(maxsize: Any) -> Any:
    """The whole number of items ``maxsize`` allows: queue.Queue and asyncio.Queue are full
    once ``qsize() >= maxsize``, so a fractional one holds its ceiling; one of 0 or less
    is no bound, nor is one never reached (inf, NaN), and one above ``sys.maxsize``
    holds as many as that (more than memory does). What does not compare with 0 is left
    for the core to refuse."""
    try:
        if not maxsize > 0:
            return 0
        return min(math.ceil(maxsize), sys.maxsize)
    except (OverflowError, ValueError):  # inf, NaN
        return 0
    except TypeError:
        return maxsize


class Queue(QueueCore):
    """queue.Queue (FIFO) whose ``.aio`` face is an asyncio.Queue over the same items."""

    __slots__ = ("_aio_face", "_maxsize")
    _KIND = "fifo"
    # `Queue[int]` in annotations, as queue.Queue, asyncio.Queue and janus.Queue allow.
    __class_getitem__ = classmethod(types.GenericAlias)

    def __new__(cls, maxsize: int = 0) -> Queue:
        return super().__new__(cls, _capacity(maxsize), cls._KIND)

    def __init__(self, maxsize: int = 0) -> None:
        self._aio_face = None
        self._maxsize = maxsize

    @property
    def maxsize(self) -> Any:
        """As given (a float included); settable at any time, see QueueCore.maxsize."""
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: Any) -> None:
        _set_capacity(self, _capacity(value))
        self._maxsize = value

    @property
    def aio(self) -> AsyncQueue:
        face = self._aio_face
        if face is None:
            face = self._aio_face = AsyncQueue(self)
        return face

    async_q = aio

    @property
    def sync_q(self) -> Queue:
        return self

    def shutdown(self, immediate: bool = False) -> None:
        """Shuts both faces down: puts raise QueueShutDown from now on, and gets once the
        queue is empty; every waiting getter and putter wakes. ``immediate``: the items
        left are removed now, each marked done for ``join()``. As Python 3.13's
        ``queue.Queue.shutdown``/``asyncio.Queue.shutdown``."""
        self._shutdown(bool(immediate))

    @property
    def is_shutdown(self) -> bool:
        """Whether ``shutdown()`` was called (queue.Queue's attribute, read-only here)."""
        return self._is_shutdown

    def __repr__(self) -> str:
        cls = type(self)
        shut = " shutdown" if self._is_shutdown else ""
        return (
            f"<{cls.__module__}.{cls.__qualname__} at {id(self):#x} "
            f"maxsize={self.maxsize} qsize={self.qsize()}{shut}>"
        )


class LifoQueue(Queue):
    """queue.LifoQueue: the last item put is the first got."""

    __slots__ = ()
    _KIND = "lifo"


class PriorityQueue(Queue):
    """queue.PriorityQueue: the lowest item (heapq order) is got first."""

    __slots__ = ()
    _KIND = "priority"


class SimpleQueue(QueueCore):
    """queue.SimpleQueue: unbounded FIFO without task tracking; ``.aio`` as for Queue,
    except that its ``join()`` returns at once and ``task_done()`` does nothing."""

    __slots__ = ("_aio_face",)

    __class_getitem__ = classmethod(types.GenericAlias)

    def __new__(cls) -> SimpleQueue:
        return super().__new__(cls, 0, "fifo", False, True)

    def __init__(self) -> None:
        self._aio_face = None

    aio = Queue.aio
    async_q = Queue.aio
    sync_q = Queue.sync_q
