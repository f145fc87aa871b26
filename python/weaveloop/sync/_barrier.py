"""Barrier shared by threads and coroutines: ``wait()`` in threads (threading.Barrier),
``await barrier.aio.wait()`` in coroutines (asyncio.Barrier face); parties of both
kinds count towards the same cycle.

threading.Barrier's state machine, kept as is, over a weaveloop.sync Condition.
Invariant: ``_state``/``_count`` change only with the condition's lock held.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from ._condition import Condition
from ._errors import BrokenBarrierError
from ._locks import Lock
from ._waiting import forbid_blocking

__all__ = ["Barrier"]

_FILLING, _DRAINING, _RESETTING, _BROKEN = 0, 1, -1, -2
# In asyncio.Barrier's words (its repr).
_STATE_NAMES = {
    _FILLING: "filling",
    _DRAINING: "draining",
    _RESETTING: "resetting",
    _BROKEN: "broken",
}


class Barrier:
    """threading.Barrier whose ``.aio`` face is an asyncio.Barrier over the same cycle."""

    def __init__(
        self, parties: int, action: Callable[[], Any] | None = None, timeout: float | None = None
    ) -> None:
        if parties < 1:
            raise ValueError("parties must be > 0")
        self._cond = Condition(Lock())
        self._action = action
        self._timeout = timeout
        self._parties = parties
        self._state = _FILLING
        self._count = 0
        self._aio_face: _AioBarrier | None = None

    @property
    def aio(self) -> _AioBarrier:
        face = self._aio_face
        if face is None:
            face = self._aio_face = _AioBarrier(self)
        return face

    def __repr__(self) -> str:
        cls = type(self)
        if self.broken:
            return f"<{cls.__module__}.{cls.__qualname__} at {id(self):#x}: broken>"
        return (
            f"<{cls.__module__}.{cls.__qualname__} at {id(self):#x}: "
            f"waiters={self.n_waiting}/{self.parties}>"
        )

    def wait(self, timeout: float | None = None) -> int:
        """Waits until ``parties`` threads and coroutines have called wait; returns the
        arrival index (0 .. parties-1)."""
        if timeout is None:
            timeout = self._timeout
        forbid_blocking("Barrier.wait()", "await barrier.aio.wait()")
        with self._cond:
            self._enter()
            index = self._count
            self._count += 1
            try:
                if index + 1 == self._parties:
                    self._release()
                else:
                    self._wait(timeout)
                return index
            finally:
                self._count -= 1
                self._exit()

    def _enter(self) -> None:
        while self._state in (_RESETTING, _DRAINING):
            self._cond.wait()
        if self._state < 0:
            raise BrokenBarrierError
        assert self._state == _FILLING

    def _release(self) -> None:
        try:
            if self._action:
                self._action()
            self._state = _DRAINING
            self._cond.notify_all()
        except BaseException:
            self._break()
            raise

    def _wait(self, timeout: float | None) -> None:
        if not self._cond.wait_for(lambda: self._state != _FILLING, timeout):
            self._break()
            raise BrokenBarrierError
        if self._state < 0:
            raise BrokenBarrierError
        assert self._state == _DRAINING

    def _exit(self) -> None:
        if self._count == 0 and self._state in (_RESETTING, _DRAINING):
            self._state = _FILLING
            self._cond.notify_all()

    def reset(self) -> None:
        with self._held():
            self._reset()

    def _reset(self, draining_too: bool = False) -> None:
        # `draining_too`: asyncio.Barrier's rule, where a draining barrier resets too (its
        # parties not yet out get BrokenBarrierError); threading's leaves it to finish.
        if self._count > 0:
            if draining_too or self._state in (_FILLING, _BROKEN):
                self._state = _RESETTING
        else:
            self._state = _FILLING
        self._cond.notify_all()

    def abort(self) -> None:
        with self._held():
            self._break()

    @contextlib.contextmanager
    def _held(self):
        """The barrier's own lock, for a moment: reset() and abort() never wait for the
        barrier, so they are allowed on a loop's thread (a loop callback), as
        threading.Barrier's are, where rule 4 refuses ``with lock``."""
        lock = self._cond._lock
        lock._acquire_briefly()
        try:
            yield
        finally:
            lock.release()

    def _break(self) -> None:
        self._state = _BROKEN
        self._cond.notify_all()

    @property
    def parties(self) -> int:
        return self._parties

    @property
    def n_waiting(self) -> int:
        return self._count if self._state == _FILLING else 0

    @property
    def broken(self) -> bool:
        return self._state == _BROKEN


class _AioBarrier:
    """asyncio.Barrier face of a weaveloop.sync.Barrier (the same cycle)."""

    __slots__ = ("_b",)

    def __init__(self, barrier: Barrier) -> None:
        self._b = barrier

    def __repr__(self) -> str:
        b = self._b
        extra = _STATE_NAMES[b._state]
        if b._state != _BROKEN:
            extra += f", waiters:{b.n_waiting}/{b.parties}"
        return f"<asyncio face of {b!r} [{extra}]>"

    async def __aenter__(self) -> int:
        return await self.wait()

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def wait(self) -> int:
        b = self._b
        cond = b._cond
        async with cond:
            while b._state in (_RESETTING, _DRAINING):
                await cond.aio.wait()
            if b._state < 0:
                raise BrokenBarrierError("Barrier aborted")  # asyncio.Barrier's words
            index = b._count
            b._count += 1
            try:
                if index + 1 == b._parties:
                    b._release()
                else:
                    await self._wait(cond)
                return index
            finally:
                b._count -= 1
                b._exit()

    async def _wait(self, cond: Condition) -> None:
        b = self._b
        try:
            if b._timeout is None:
                await cond.aio.wait_for(lambda: b._state != _FILLING)
            else:
                async with asyncio.timeout(b._timeout):
                    await cond.aio.wait_for(lambda: b._state != _FILLING)
        except TimeoutError:
            b._break()
            raise BrokenBarrierError from None
        # A cancelled party just leaves (wait()'s `finally`), as with asyncio.Barrier: the
        # others keep waiting for a full count.
        if b._state < 0:
            raise BrokenBarrierError("Abort or reset of barrier")  # asyncio.Barrier's words

    async def reset(self) -> None:
        async with self._b._cond:
            self._b._reset(draining_too=True)

    async def abort(self) -> None:
        async with self._b._cond:
            self._b._break()

    @property
    def parties(self) -> int:
        return self._b.parties

    @property
    def n_waiting(self) -> int:
        return self._b.n_waiting

    @property
    def broken(self) -> bool:
        return self._b.broken
