"""Condition shared by threads and coroutines, over a weaveloop.sync Lock or RLock.

Threads use the threading.Condition API (``with cond``, ``wait``, ``wait_for``,
``notify``); coroutines ``async with cond`` and the ``.aio`` face (asyncio.Condition).
Invariant: waiters of both kinds are notified in FIFO order from one queue, and a
notification received by a waiter that then gives up goes to the next one.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from asyncio.events import _get_running_loop
from collections.abc import Callable
from typing import Any

from .._core import NotifierCore
from ._locks import Lock, RLock
from ._waiting import forbid_blocking, not_retaken, release_at_exit, wait_granted

__all__ = ["Condition"]


def _count(n: Any, *, nan_wakes_all: bool = False) -> int:
    """How many waiters ``notify(n)`` wakes, as threading (``while n > 0: n -= 1``) and
    asyncio (``if woken >= n: break``) read ``n``: none for ``n <= 0``, the ceiling of a
    fraction, all for a huge ``n``; a NaN wakes none on the thread face and all on the
    asyncio one (``nan_wakes_all``)."""
    if n != n:
        return sys.maxsize if nan_wakes_all else 0
    if n <= 0:
        return 0
    return sys.maxsize if n >= sys.maxsize else math.ceil(n)


class Condition:
    """threading.Condition whose ``.aio`` face is an asyncio.Condition on the same lock."""

    def __init__(self, lock: Lock | RLock | None = None) -> None:
        if lock is None:
            lock = RLock()
        self._lock = lock
        self._n = NotifierCore()
        self.acquire = lock.acquire
        self.release = lock.release
        self._aio_face: _AioCondition | None = None
        # Any lock with the threading protocol serves the thread side (as in threading);
        # the coroutine side needs a weaveloop.sync Lock or RLock.
        for name in ("_release_save", "_acquire_restore", "_is_owned"):
            if hasattr(lock, name):
                setattr(self, name, getattr(lock, name))

    # -- the threading.Condition protocol for a plain lock --
    def _release_save(self) -> Any:
        self._lock.release()

    def _acquire_restore(self, state: Any) -> None:
        self._lock.acquire()

    def _is_owned(self) -> bool:
        if self._lock.acquire(False):
            self._lock.release()
            return False
        return True

    def __enter__(self) -> bool:
        forbid_blocking("Condition.acquire()", "async with cond")
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    async def __aenter__(self) -> None:
        await self.aio.__aenter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        release_at_exit(self._lock)

    @property
    def aio(self) -> _AioCondition:
        if not isinstance(self._lock, (Lock, RLock)):
            raise TypeError("the asyncio face needs a weaveloop.sync Lock or RLock")
        face = self._aio_face
        if face is None:
            face = self._aio_face = _AioCondition(self)
        return face

    def __repr__(self) -> str:
        return f"<Condition({self._lock}, {self._n._waiting()})>"

    def wait(self, timeout: float | None = None) -> bool:
        """Releases the lock, waits for a notification (at most ``timeout``), re-takes it."""
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        # Always refused on a loop's thread, even wait(0): it gives the lock up and must
        # take it back with a blocking acquire.
        forbid_blocking("Condition.wait()", "await cond.aio.wait()")
        waiter = self._n._enqueue_thread()
        saved = self._release_save()
        try:
            return self._n._park(waiter, timeout)
        except BaseException:
            # A timeout refused before parking (TypeError, OverflowError) included: the
            # waiter leaves the queue, a notification it got goes to the next one.
            self._n._abandon(waiter)
            raise
        finally:
            self._acquire_restore(saved)

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        endtime = None
        waittime = timeout
        result = predicate()
        while not result:
            if waittime is not None:
                if endtime is None:
                    endtime = time.monotonic() + waittime
                else:
                    waittime = endtime - time.monotonic()
                    if waittime <= 0:
                        break
            self.wait(waittime)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        self._n._notify(_count(n))

    def notify_all(self) -> None:
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        self._n._notify_all()

    notifyAll = notify_all  # noqa: N815 - threading's legacy alias


class _AioCondition:
    """asyncio.Condition face of a weaveloop.sync.Condition."""

    __slots__ = ("_c",)

    def __init__(self, cond: Condition) -> None:
        self._c = cond

    def __repr__(self) -> str:
        # The state in asyncio.Condition's words.
        extra = "locked" if self.locked() else "unlocked"
        waiting = self._c._n._waiting()
        if waiting:
            extra += f", waiters:{waiting}"
        return f"<asyncio face of {self._c!r} [{extra}]>"

    async def acquire(self) -> bool:
        await self._c._lock.__aenter__()
        return True

    def release(self) -> None:
        try:
            self._c._lock.release()
        except RuntimeError:
            raise RuntimeError("Lock is not acquired.") from None

    def locked(self) -> bool:
        return self._c._lock.locked()

    async def __aenter__(self) -> None:
        await self._c._lock.__aenter__()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        release_at_exit(self._c._lock)

    def _holder(self) -> tuple[bool, int | None]:
        """Whether the lock is held as this face requires it, and, for an RLock held by
        another task of the running loop, that task (None: the caller, or a plain lock)."""
        lock = self._c._lock
        if not isinstance(lock, RLock):
            return lock.locked(), None
        if lock._is_owned():
            return True, None
        owner = _loop_task_owning(lock)
        return owner is not None, owner

    def _owned(self) -> bool:
        return self._holder()[0]

    async def wait(self) -> bool:
        """Releases the lock, awaits a notification, re-takes the lock (even if cancelled)."""
        c = self._c
        held, owner = self._holder()
        if not held:
            raise RuntimeError("cannot wait on un-acquired lock")
        lock = c._lock
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        waiter = c._n._enqueue_task(loop, fut)
        if isinstance(lock, RLock):
            depth, owner = lock._release_save(owner)
        else:
            depth = 1
            lock.release()
        notified = False
        try:
            try:
                await fut
            except BaseException:
                c._n._abandon(waiter)
                raise
            notified = True
            return True
        finally:
            # Re-take the lock whatever happened, as asyncio.Condition does.
            cancelled = None
            if _get_running_loop() is None:
                # Nothing can be awaited, and the lock is not taken back: the exits of
                # the `async with` around this wait must not release it (a thread may
                # hold it now; an RLock would be owned by a task that is gone).
                raise not_retaken(lock, depth)
            while True:
                try:
                    if not lock._try_permit():
                        await wait_granted(lock._enqueue, lock._abandon)
                    break
                except asyncio.CancelledError as exc:
                    cancelled = exc
            if isinstance(lock, RLock):
                lock._own(depth, owner)
            if cancelled is not None:
                if notified:
                    # Notified, then cancelled while re-taking the lock: the caller gives
                    # up, and the notification goes to the next waiter (as asyncio's
                    # since 3.13), not lost with it.
                    c._n._notify(1)
                raise cancelled

    async def wait_for(self, predicate: Callable[[], Any]) -> Any:
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        if not self._owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        self._c._n._notify(_count(n, nan_wakes_all=True))

    def notify_all(self) -> None:
        if not self._owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        self._c._n._notify_all()


def _loop_task_owning(lock: RLock) -> int | None:
    """The owner of ``lock`` if it is a task of the running loop, else None.

    The coroutine face accepts such an owner where asyncio.Condition accepts any holder
    of its lock: on Python 3.11 ``wait_for(cond.wait(), t)`` runs the wait in a task
    of its own, not in the task that holds the lock.
    """
    owner = lock._owner
    if owner and any(id(t) == owner for t in asyncio.all_tasks()):
        return owner
    return None
