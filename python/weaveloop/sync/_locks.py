"""Lock, RLock, Semaphore and BoundedSemaphore shared by threads and coroutines.

Each object *is* its threading counterpart (``with``, ``acquire(blocking, timeout)``,
``release``) and also supports ``async with`` in coroutines; ``.aio`` is a face that is
a drop-in for the asyncio class (awaitable ``acquire``). Both faces are views of one
state in Rust (one FIFO queue of thread and coroutine waiters).
Invariant: nothing here blocks a thread that runs an event loop: such a call raises.
"""

from __future__ import annotations

from typing import Any

from .._core import LockCore, RLockCore, SemaphoreCore
from ._waiting import exit_releases, release_at_exit, wait_granted

__all__ = ["BoundedSemaphore", "Lock", "RLock", "Semaphore"]


def _state(locked: bool) -> str:
    return "locked" if locked else "unlocked"


class _AioPermit:
    """asyncio.Lock / asyncio.Semaphore face of a permit-based primitive."""

    __slots__ = ("_p",)

    def __init__(self, primitive: Any) -> None:
        self._p = primitive

    async def acquire(self) -> bool:
        p = self._p
        if not p._try_acquire():
            await wait_granted(p._enqueue, p._abandon)
            p._granted()
        return True

    def locked(self) -> bool:
        return self._p.locked()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(self._p, RLock):
            release_at_exit(self._p)
        elif exit_releases(self._p):
            self.release()

    def __repr__(self) -> str:
        return f"<asyncio face of {self._p!r}>"


class _AioLock(_AioPermit):
    __slots__ = ()

    def release(self) -> None:
        try:
            self._p.release()
        except RuntimeError:
            raise RuntimeError("Lock is not acquired.") from None


class _AioSemaphore(_AioPermit):
    __slots__ = ()

    def release(self) -> None:
        try:
            self._p.release()
        except ValueError:
            raise ValueError("BoundedSemaphore released too many times") from None


class _Faced:
    """Mixin: ``async with`` on the object itself and the lazily made ``.aio`` face."""

    __slots__ = ()
    _AIO: type

    @property
    def aio(self) -> Any:
        """The asyncio face (drop-in for the asyncio class), sharing this state."""
        face = self._aio_face
        if face is None:
            face = self._aio_face = self._AIO(self)
        return face

    def _granted(self) -> None:
        """Coroutine side: the permit was granted after a wait (RLock records owner)."""

    async def __aenter__(self) -> None:
        if not self._try_acquire():
            await wait_granted(self._enqueue, self._abandon)
            self._granted()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        release_at_exit(self)


class Lock(_Faced, LockCore):
    """threading.Lock that coroutines can take with ``async with`` (or ``.aio``)."""

    __slots__ = ("_aio_face", "_not_retaken")
    _AIO = _AioLock

    def __init__(self) -> None:
        self._aio_face = None
        self._not_retaken = 0  # see _waiting.exit_releases

    def __repr__(self) -> str:
        cls = type(self)
        state = _state(self.locked())
        return f"<{state} {cls.__module__}.{cls.__qualname__} object at {id(self):#x}>"

    _try_permit = LockCore._try_acquire

    # threading.Condition protocol for a plain lock
    def _is_owned(self) -> bool:
        if self.acquire(False):
            self.release()
            return False
        return True


class RLock(_Faced, RLockCore):
    """threading.RLock whose owner is the running task in a coroutine, else the thread."""

    __slots__ = ("_aio_face", "_not_retaken")
    _AIO = _AioLock

    def __init__(self) -> None:
        self._aio_face = None
        self._not_retaken = 0  # see _waiting.exit_releases

    def _granted(self) -> None:
        self._own(1)

    def __repr__(self) -> str:
        owner = self._owner
        count = self._recursion_count() if owner else 0
        return (
            f"<{_state(bool(owner))} {type(self).__module__}.{type(self).__qualname__} "
            f"object owner={owner} count={count} at {id(self):#x}>"
        )


def _permits(value: Any) -> Any:
    """A semaphore's initial value: a whole float counts as its int, as the stdlib's
    semaphores count it down by ones (any other float is refused: a value that never
    reaches 0 would never block)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class Semaphore(_Faced, SemaphoreCore):
    """threading.Semaphore that coroutines can take with ``async with`` (or ``.aio``)."""

    __slots__ = ("_aio_face",)
    _AIO = _AioSemaphore

    def __new__(cls, value: int = 1) -> Semaphore:
        return super().__new__(cls, _permits(value), False)

    def __init__(self, value: int = 1) -> None:
        self._aio_face = None

    def __repr__(self) -> str:
        cls = type(self)
        return f"<{cls.__module__}.{cls.__qualname__} at {id(self):#x}: value={self._value}>"


class BoundedSemaphore(Semaphore):
    """threading.BoundedSemaphore: releasing above the initial value is a ValueError."""

    __slots__ = ()

    def __new__(cls, value: int = 1) -> BoundedSemaphore:
        return SemaphoreCore.__new__(cls, _permits(value), True)

    def __repr__(self) -> str:
        cls = type(self)
        return (
            f"<{cls.__module__}.{cls.__qualname__} at {id(self):#x}: "
            f"value={self._value}/{self._initial_value}>"
        )
