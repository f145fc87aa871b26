"""One face per sync library (stdlib, janus, culsans, aiologic, weaveloop.sync) for the
sync group: how a thread and a coroutine put/get on its queue and take its lock.

Each adapter declares the capabilities it has; a workload needing one it lacks is
skipped for it ("-" in the table), never failed. Queues are each library's fastest
unbounded FIFO that has both a thread and a coroutine face. Build faces inside the
running loop (janus and culsans bind to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

#: Display order; aiologic is the baseline of the sync group's ratios. "no-lock" is a
#: control, not a library: the lag workload with the same thread and coroutine but no
#: lock at all, i.e. the lateness floor of the host loop on this machine in this run.
LIBS = ("stdlib", "janus", "culsans", "aiologic", "weaveloop", "no-lock")
BASELINE = "aiologic"

_MODULES = {
    "stdlib": "asyncio",
    "janus": "janus",
    "culsans": "culsans",
    "aiologic": "aiologic",
    "weaveloop": "weaveloop.sync",
    "no-lock": "contextlib",
}

_CAPABILITIES = {
    # stdlib: call_soon_threadsafe into asyncio.Queue / put_nowait into queue.Queue;
    # threading.Lock from threads, asyncio.Lock from coroutines, and (the trap of
    # DESIGN.md rule 4) threading.Lock taken inside a coroutine for the lag workload.
    "stdlib": frozenset({"queue", "lock_thread", "lock_coro", "lock_lag"}),
    "janus": frozenset({"queue"}),
    "culsans": frozenset({"queue"}),
    "aiologic": frozenset({"queue", "lock", "lock_thread", "lock_coro", "lock_lag"}),
    "weaveloop": frozenset({"queue", "lock", "lock_thread", "lock_coro", "lock_lag"}),
    "no-lock": frozenset({"lock_lag"}),
}


@dataclass
class QueueFace:
    """A queue seen from both sides: blocking thread calls, awaitable coroutine calls."""

    thread_put: Callable[[Any], Any]
    thread_get: Callable[[], Any]
    async_put: Callable[[Any], Awaitable[Any]]
    async_get: Callable[[], Awaitable[Any]]


@dataclass
class LockFace:
    """``with thread_side`` in threads, ``async with coro_side`` in coroutines."""

    thread_side: Any
    coro_side: Any


def unavailable(name: str) -> str | None:
    if name not in _MODULES:
        return f"unknown library {name!r} (known: {', '.join(LIBS)})"
    try:
        importlib.import_module(_MODULES[name])
    except Exception as exc:
        return f"not importable: {type(exc).__name__}: {exc}"
    return None


def capabilities(name: str) -> frozenset[str]:
    return _CAPABILITIES.get(name, frozenset())


def version(name: str) -> str | None:
    if name == "stdlib":
        import platform

        return platform.python_version()
    try:
        from importlib.metadata import version as dist_version

        return dist_version(name)
    except Exception:
        return None


class _BlockingInCoroutine:
    """``async with`` over a threading.Lock: blocks the loop thread while it waits."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


def make_queue(name: str) -> QueueFace:
    if name == "stdlib":
        loop = asyncio.get_running_loop()
        aq: asyncio.Queue = asyncio.Queue()
        tq: queue.SimpleQueue = queue.SimpleQueue()
        post = loop.call_soon_threadsafe

        async def put_nowait(item: Any) -> None:
            tq.put_nowait(item)

        # thread->coroutine: call_soon_threadsafe into asyncio.Queue;
        # coroutine->thread: put_nowait into queue.SimpleQueue, blocking get in the thread.
        return QueueFace(
            thread_put=lambda item: post(aq.put_nowait, item),
            thread_get=tq.get,
            async_put=put_nowait,
            async_get=aq.get,
        )
    if name in ("janus", "culsans"):
        q = importlib.import_module(name).Queue()
        return QueueFace(q.sync_q.put, q.sync_q.get, q.async_q.put, q.async_q.get)
    if name == "aiologic":
        import aiologic

        q = aiologic.SimpleQueue()
        return QueueFace(q.green_put, q.green_get, q.async_put, q.async_get)
    if name == "weaveloop":
        return _weaveloop_queue()
    raise ValueError(name)


def _weaveloop_queue() -> QueueFace:
    """weaveloop.sync's queue, whichever of the candidate faces it exposes."""
    sync = importlib.import_module("weaveloop.sync")
    cls = getattr(sync, "SimpleQueue", None) or sync.Queue
    q = cls()
    if hasattr(q, "sync_q") and hasattr(q, "async_q"):  # janus-style faces
        return QueueFace(q.sync_q.put, q.sync_q.get, q.async_q.put, q.async_q.get)

    def first(*names: str) -> Any:
        return next((getattr(q, n) for n in names if hasattr(q, n)), None)

    faces = (
        first("green_put", "sync_put", "put"),
        first("green_get", "sync_get", "get"),
        first("async_put", "aput"),
        first("async_get", "aget"),
    )
    if all(faces):  # method-prefix style (aiologic-like)
        return QueueFace(*faces)
    raise NotImplementedError(
        f"weaveloop.sync.{cls.__name__}: no known coroutine face (sync_q/async_q, "
        "async_put/async_get, aput/aget); teach bench/sync_adapters.py"
    )


def make_lock(name: str, need: str) -> LockFace:
    """A lock for workload capability ``need`` (see ``_CAPABILITIES``)."""
    if name == "stdlib":
        if need == "lock_coro":
            return LockFace(None, asyncio.Lock())
        lock = threading.Lock()
        return LockFace(lock, _BlockingInCoroutine(lock))
    if name == "aiologic":
        import aiologic

        lock = aiologic.Lock()
        return LockFace(lock, lock)
    if name == "weaveloop":
        lock = importlib.import_module("weaveloop.sync").Lock()
        return LockFace(lock, lock)
    if name == "no-lock":  # the control: `with`/`async with` that guard nothing
        return LockFace(contextlib.nullcontext(), contextlib.nullcontext())
    raise ValueError(name)
