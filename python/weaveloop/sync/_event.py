"""Event shared by threads and coroutines: ``wait(timeout)`` in threads (threading.Event),
``await event.aio.wait()`` in coroutines (asyncio.Event face).

Invariant: ``set()`` from any thread wakes every waiter: threads directly, coroutines
through their own loop, one thread-safe call per loop for all its waiters.
"""

from __future__ import annotations

from .._core import EventCore
from ._waiting import wait_granted

__all__ = ["Event"]


class _AioEvent:
    """asyncio.Event face of a weaveloop.sync.Event."""

    __slots__ = ("_e",)

    def __init__(self, event: Event) -> None:
        self._e = event

    async def wait(self) -> bool:
        e = self._e
        if not e.is_set():
            await wait_granted(e._enqueue, e._abandon)
        return True

    def set(self) -> None:
        self._e.set()

    def clear(self) -> None:
        self._e.clear()

    def is_set(self) -> bool:
        return self._e.is_set()

    def __repr__(self) -> str:
        return f"<asyncio face of {self._e!r}>"


class Event(EventCore):
    """threading.Event whose ``.aio`` face is an asyncio.Event over the same flag."""

    __slots__ = ("_aio_face",)

    def __init__(self) -> None:
        self._aio_face = None

    @property
    def aio(self) -> _AioEvent:
        face = self._aio_face
        if face is None:
            face = self._aio_face = _AioEvent(self)
        return face

    def isSet(self) -> bool:  # noqa: N802 - threading's legacy alias
        return self.is_set()

    def __repr__(self) -> str:
        cls = type(self)
        state = "set" if self.is_set() else "unset"
        return f"<{cls.__module__}.{cls.__qualname__} at {id(self):#x}: {state}>"
