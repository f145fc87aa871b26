"""The coroutine side's slow path shared by every primitive: queue a future, await it,
and give the place (or the grant already received) up if the await is interrupted.

Invariant: a coroutine that stops waiting for any reason (cancellation, a timeout of
``asyncio.timeout``/``wait_for``) calls ``abandon``, which passes a grant it already
received on to the next waiter; so no permit, item slot or notification is leaked.
"""

from __future__ import annotations

from asyncio import events
from collections.abc import Callable
from typing import Any

_get_running_loop = events._get_running_loop


async def wait_granted(enqueue: Callable[..., Any], abandon: Callable[[Any], Any]) -> None:
    """Waits until the primitive grants this coroutine (``enqueue`` returned None: at once)."""
    loop = events.get_running_loop()
    fut = loop.create_future()
    waiter = enqueue(loop, fut)
    if waiter is None:
        return
    try:
        await fut
    except BaseException:
        abandon(waiter)
        raise


def forbid_blocking(call: str, async_form: str) -> None:
    """Rule 4: a blocking call on a thread that runs an event loop is a RuntimeError."""
    if _get_running_loop() is not None:
        raise RuntimeError(
            f"{call} would block the event loop running in this thread; "
            f"in a coroutine use '{async_form}'"
        )


class LockNotRetaken(RuntimeError):
    """A condition's coroutine wait ended with no event loop running in its thread (the
    coroutine was closed outside its loop: the garbage collector finalizing a waiter whose
    loop is gone), so it could not take its lock back; see ``exit_releases``."""

    def __init__(self, lock: Any) -> None:
        super().__init__(
            "the condition's lock was not re-acquired: the waiting coroutine was closed "
            "with no event loop running"
        )
        self.lock = lock


def not_retaken(lock: Any, depth: int) -> LockNotRetaken:
    """Records that a condition wait left ``lock`` given up (``depth`` levels) instead of
    taking it back, for the ``async with`` exits around it; the error to raise."""
    lock._not_retaken += depth
    return LockNotRetaken(lock)


def exit_releases(lock: Any) -> bool:
    """Whether an ``async with`` exit of ``lock`` releases it. Not the exits around a
    condition wait that could not take the lock back: they unwind a coroutine finalized
    with no loop running, like that wait, whose lock is not theirs any more (a thread may
    hold it). Counted per lock, not per coroutine (the garbage collector may finalize the
    wait's coroutine before or after the one with the exit): every exit of such a dead
    coroutine is one of a matched entry, so the total released stays right."""
    if getattr(lock, "_not_retaken", 0) and _get_running_loop() is None:
        lock._not_retaken -= 1
        return False
    return True


def release_paired(lock: Any) -> None:
    """Releases ``lock`` at the exit of an ``async with`` that took it. An RLock taken by
    another owner is released on that owner's behalf: the coroutine is finishing outside
    the task that entered (an async generator closed by the loop's finalizer in a task of
    its own, a coroutine finalized by the garbage collector), and that entry, not
    released since, is what holds the lock."""
    try:
        lock.release()
    except RuntimeError:
        owner = getattr(lock, "_owner", 0)
        if not owner:
            raise
        lock._release_as(owner)


def release_at_exit(lock: Any) -> None:
    """The release of an ``async with lock`` exit: ``release_paired``, unless
    ``exit_releases`` says this exit releases nothing."""
    if exit_releases(lock):
        release_paired(lock)
