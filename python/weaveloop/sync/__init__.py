"""weaveloop.sync: locks, events, semaphores, conditions, barriers and queues that
threads and coroutines share, on any event loop (asyncio, uvloop, weaveloop).

Each object is its threading/queue counterpart for threads; coroutines use
``async with`` on it, or its ``.aio`` face, a drop-in for the asyncio class. A blocking
call made on a thread that runs an event loop raises RuntimeError naming the async
form, instead of stalling the loop (DESIGN.md rule 4).
"""

from __future__ import annotations

from ._barrier import Barrier
from ._condition import Condition
from ._errors import BrokenBarrierError, QueueEmpty, QueueFull, QueueShutDown
from ._event import Event
from ._locks import BoundedSemaphore, Lock, RLock, Semaphore
from ._queues import AsyncQueue, LifoQueue, PriorityQueue, Queue, SimpleQueue

__all__ = [
    "AsyncQueue",
    "Barrier",
    "BoundedSemaphore",
    "BrokenBarrierError",
    "Condition",
    "Event",
    "LifoQueue",
    "Lock",
    "PriorityQueue",
    "Queue",
    "QueueEmpty",
    "QueueFull",
    "QueueShutDown",
    "RLock",
    "Semaphore",
    "SimpleQueue",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
