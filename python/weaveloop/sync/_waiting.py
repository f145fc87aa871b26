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
