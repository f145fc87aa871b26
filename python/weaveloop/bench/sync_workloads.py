"""The sync-primitive group (issue 4): queues and locks shared by threads and coroutines,
weaveloop.sync side by side with stdlib, janus, culsans and aiologic.

Every job runs on one host loop (``--sync-loop``, default stock asyncio, which every
library supports). Sizes (full / ``--quick``):

=============  =============================================================  ===========
workload       what                                                           size
=============  =============================================================  ===========
queue_t2c      one thread puts N items, a coroutine gets them                 200k / 20k
queue_c2t      a coroutine puts N items, one thread gets them                 200k / 20k
lock_handoff   a thread and a coroutine each take one lock N times in tight   20k / 2k
               loops, the coroutine queued behind the thread at the start: a
               fair lock alternates; acquisitions/s and thread<->coroutine
               handoffs/s (a barging lock scores on the first, a fair one on both)
lock_thread    uncontended with-lock from a thread (stdlib: threading.Lock)   500k / 50k
lock_coro      uncontended async-with from a coroutine (stdlib: asyncio.Lock) 300k / 30k
lock_lag       1 ms timer lateness while a thread holds the lock in 50 ms     1.0 s / 0.4 s
               slices and a coroutine waits for it (stdlib: threading.Lock
               taken inside the coroutine: the trap of DESIGN.md rule 4;
               no-lock: the same thread and coroutine guarding nothing, the
               floor this host loop and machine reach in the same run)
=============  =============================================================  ===========
"""

from __future__ import annotations

import asyncio
import threading
import time
from time import perf_counter

from . import loops, sync_adapters
from .probes import in_thread, periodic_lateness
from .registry import Group, Metric, Workload, latency, throughput
from .stats import lateness_summary


async def queue_t2c(lib: str, n: int) -> dict:
    loop = asyncio.get_running_loop()
    q = sync_adapters.make_queue(lib)
    go = threading.Event()

    def producer() -> None:
        put = q.thread_put
        go.wait()
        for i in range(n):
            put(i)

    sender = in_thread(loop, producer, name="producer")
    get = q.async_get
    t0 = perf_counter()
    go.set()
    last = None
    for _ in range(n):
        last = await get()
    elapsed = perf_counter() - t0
    await sender
    if last != n - 1:
        raise AssertionError(f"FIFO broken: last item {last!r}, expected {n - 1}")
    return {"throughput": n / elapsed}


async def queue_c2t(lib: str, n: int) -> dict:
    loop = asyncio.get_running_loop()
    q = sync_adapters.make_queue(lib)

    def consumer() -> tuple[float, object]:
        get = q.thread_get
        last = None
        for _ in range(n):
            last = get()
        return perf_counter(), last

    receiver = in_thread(loop, consumer, name="consumer")
    put = q.async_put
    t0 = perf_counter()
    for i in range(n):
        await put(i)
    t_end, last = await receiver
    if last != n - 1:
        raise AssertionError(f"FIFO broken: last item {last!r}, expected {n - 1}")
    return {"throughput": n / (t_end - t0)}


async def lock_handoff(lib: str, n: int) -> dict:
    loop = asyncio.get_running_loop()
    face = sync_adapters.make_lock(lib, "lock")
    holding = threading.Event()
    last_owner = None
    handoffs = 0

    def take(owner: str) -> None:  # called with the lock held
        nonlocal last_owner, handoffs
        if owner != last_owner:
            handoffs += 1
            last_owner = owner

    def thread_side() -> None:
        lock = face.thread_side
        with lock:  # hold it until the coroutine is queued behind us
            take("thread")
            holding.set()
            time.sleep(0.005)
        for _ in range(n - 1):
            with lock:
                take("thread")

    other = in_thread(loop, thread_side, name="lock-thread")
    while not holding.is_set():
        await asyncio.sleep(0.0005)
    lock = face.coro_side
    t0 = perf_counter()
    for _ in range(n):
        async with lock:
            take("coro")
    await other
    elapsed = perf_counter() - t0
    return {"throughput": 2 * n / elapsed, "handoffs": handoffs / elapsed}


async def lock_thread(lib: str, n: int) -> dict:
    loop = asyncio.get_running_loop()
    lock = sync_adapters.make_lock(lib, "lock_thread").thread_side

    def spin() -> float:
        for _ in range(1000):
            with lock:
                pass
        t0 = perf_counter()
        for _ in range(n):
            with lock:
                pass
        return perf_counter() - t0

    return {"throughput": n / await in_thread(loop, spin, name="uncontended")}


async def lock_coro(lib: str, n: int) -> dict:
    lock = sync_adapters.make_lock(lib, "lock_coro").coro_side
    for _ in range(1000):
        async with lock:
            pass
    t0 = perf_counter()
    for _ in range(n):
        async with lock:
            pass
    return {"throughput": n / (perf_counter() - t0)}


async def lock_lag(lib: str, duration: float, hold: float, period: float) -> dict:
    loop = asyncio.get_running_loop()
    face = sync_adapters.make_lock(lib, "lock_lag")
    stop = threading.Event()
    holding = threading.Event()

    def holder() -> int:
        slices = 0
        while not stop.is_set():
            with face.thread_side:
                holding.set()
                time.sleep(hold)
            slices += 1
            time.sleep(0.001)  # a gap, so an unfair lock lets the waiter in too
        return slices

    async def waiter() -> int:
        taken = 0
        while not stop.is_set():
            async with face.coro_side:
                taken += 1
            await asyncio.sleep(0.005)
        return taken

    thread = in_thread(loop, holder, name="lock-holder")
    while not holding.is_set():
        await asyncio.sleep(0.001)
    coro = asyncio.ensure_future(waiter())
    try:
        samples = await periodic_lateness(loop, period, perf_counter() + duration)
    finally:
        stop.set()
    summary = lateness_summary(samples)
    summary.update(slices=await thread, coroutine_acquisitions=await coro)
    return {"p99": summary["p99"], "worst": summary["worst"], "extra": summary}


def _run_job(workload: Workload, contender: str, params: dict, settings: dict) -> dict:
    host = settings.get("sync_loop", "asyncio")
    with asyncio.Runner(loop_factory=loops.factory(host)) as runner:
        result = runner.run(workload.func(contender, **params))
    result.setdefault("extra", {})["host_loop"] = host
    return result


WORKLOADS = (
    Workload("queue_t2c", "queue: thread puts, coroutine gets", (throughput("items/s"),),
             queue_t2c, {"n": 200_000}, {"n": 20_000}, needs="queue"),
    Workload("queue_c2t", "queue: coroutine puts, thread gets", (throughput("items/s"),),
             queue_c2t, {"n": 200_000}, {"n": 20_000}, needs="queue"),
    Workload("lock_handoff", "lock contended by a thread and a coroutine",
             (throughput("acq/s"), Metric("handoffs", "handoffs/s", True, "handoffs/s")),
             lock_handoff, {"n": 20_000}, {"n": 2_000}, needs="lock"),
    Workload("lock_thread", "uncontended acquire/release from a thread",
             (throughput("acq/s"),), lock_thread, {"n": 500_000}, {"n": 50_000},
             needs="lock_thread"),
    Workload("lock_coro", "uncontended acquire/release from a coroutine",
             (throughput("acq/s"),), lock_coro, {"n": 300_000}, {"n": 30_000},
             needs="lock_coro"),
    Workload("lock_lag", "1 ms timer lateness, thread holds the lock 50 ms, coroutine waits",
             (latency("p99", "lateness"), latency("worst", "lateness")), lock_lag,
             {"duration": 1.0, "hold": 0.05, "period": 0.001},
             {"duration": 0.4, "hold": 0.05, "period": 0.001}, needs="lock_lag"),
)  # fmt: skip

GROUP = Group(
    name="sync",
    title="Thread/coroutine sync primitives (issue 4)",
    axis="library",
    baseline=sync_adapters.BASELINE,
    contenders=sync_adapters.LIBS,
    workloads=WORKLOADS,
    available=sync_adapters.unavailable,
    run_job=_run_job,
    capabilities=sync_adapters.capabilities,
)
