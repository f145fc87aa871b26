"""The event-loop group (issue 2): the same workloads on asyncio, uvloop, rloop, weaveloop.

Sizes (full / ``--quick``), chosen so one job measures for about 0.3-1.5 s:

====================  ==========================================  ===============
workload              what                                         size
====================  ==========================================  ===============
call_soon             call_soon of N no-op callbacks, then drain   500k / 50k
timers                N call_later (0-1 ms), every other cancelled 100k / 10k
tasks                 gather of N trivial coroutines               100k / 10k
executor_seq          N awaited run_in_executor(None, noop), 1by1  20k / 2k
executor_wide         R gathers of 1000 run_in_executor no-ops     30 / 4 rounds
executor_sleep        N time.sleep(1 ms) jobs, 64 in flight        4k / 640
threadsafe_1          call_soon_threadsafe from 1 thread           200k / 20k posts
threadsafe_4          call_soon_threadsafe from 4 threads          200k / 20k posts
rcts                  run_coroutine_threadsafe round trips         10k / 1k
loop_lag              1 ms timer, 8 executor threads burn CPU      1.5 s / 0.4 s
flood                 10 ms timer, 4 threads flood threadsafe      1.5 s / 0.4 s
====================  ==========================================  ===============

Executor workloads use the loop's default executor (``run_in_executor(None, ...)``),
since that is what is compared; warm-up calls start its threads before the clock.
The flood keeps at most 1M posted-but-not-run callbacks (producers pause above that),
so memory and drain time stay bounded; ``extra.cap_waits`` in the JSON says if a
loop hit that cap. The call_soon_threadsafe latency is post-to-run time of paced posts (each thread
posts, then sleeps 0.2 ms), i.e. the wake-up path, not the backlog of a flood; the first
1000 paced posts (200 with ``--quick``) are a warm-up, not recorded (see ``_threadsafe``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from time import perf_counter

from . import loops
from .probes import in_thread, periodic_lateness
from .registry import Group, Workload, latency, throughput
from .stats import lateness_summary, percentile


def _noop() -> None:
    return None


async def call_soon(n: int) -> dict:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    schedule = loop.call_soon
    t0 = perf_counter()
    for _ in range(n):
        schedule(_noop)
    schedule(done.set_result, None)
    await done
    return {"throughput": n / (perf_counter() - t0)}


async def timers(n: int) -> dict:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    remaining = n - (n + 1) // 2

    def fire() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set_result(None)

    call_later = loop.call_later
    t0 = perf_counter()
    handles = [call_later((i % 1000) * 1e-6, fire) for i in range(n)]
    for handle in handles[::2]:
        handle.cancel()
    await done
    return {"throughput": n / (perf_counter() - t0)}


async def _trivial() -> None:
    return None


async def tasks(n: int) -> dict:
    t0 = perf_counter()
    await asyncio.gather(*[_trivial() for _ in range(n)])
    return {"throughput": n / (perf_counter() - t0)}


async def executor_seq(n: int) -> dict:
    run = asyncio.get_running_loop().run_in_executor
    for _ in range(100):
        await run(None, _noop)
    t0 = perf_counter()
    for _ in range(n):
        await run(None, _noop)
    return {"throughput": n / (perf_counter() - t0)}


async def executor_wide(rounds: int, width: int) -> dict:
    run = asyncio.get_running_loop().run_in_executor
    await asyncio.gather(*[run(None, _noop) for _ in range(width)])
    t0 = perf_counter()
    for _ in range(rounds):
        await asyncio.gather(*[run(None, _noop) for _ in range(width)])
    return {"throughput": rounds * width / (perf_counter() - t0)}


async def executor_sleep(n: int, width: int, sleep: float) -> dict:
    run = asyncio.get_running_loop().run_in_executor
    await asyncio.gather(*[run(None, time.sleep, sleep) for _ in range(width)])
    latencies: list[float] = []
    remaining = n

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = perf_counter()
            await run(None, time.sleep, sleep)
            latencies.append(perf_counter() - t)

    t0 = perf_counter()
    await asyncio.gather(*[lane() for _ in range(width)])
    elapsed = perf_counter() - t0
    return {
        "throughput": n / elapsed,
        "p99": percentile(latencies, 99) * 1e3,
        "extra": {"p50_ms": percentile(latencies, 50) * 1e3},
    }


async def _threadsafe(threads: int, posts: int, samples: int, warmup: int, pace: float) -> dict:
    loop = asyncio.get_running_loop()
    post = loop.call_soon_threadsafe

    # Throughput: every thread posts posts/threads no-op callbacks as fast as it can.
    per_thread = posts // threads
    total = per_thread * threads
    flood_done = loop.create_future()
    ran = 0

    def count() -> None:
        nonlocal ran
        ran += 1
        if ran == total:
            flood_done.set_result(None)

    go = threading.Event()

    def flood() -> None:
        go.wait()
        for _ in range(per_thread):
            post(count)

    senders = [in_thread(loop, flood, name=f"poster-{i}") for i in range(threads)]
    t0 = perf_counter()
    go.set()
    await flood_done
    elapsed = perf_counter() - t0
    await asyncio.gather(*senders)

    # Latency: paced posts carry their send time; the callback records the delay. Each
    # thread's first `warmup // threads` posts are not recorded: until the kernel has
    # placed a new posting thread and the loop thread for good, their wake-ups cross
    # CPUs, for more posts the shorter the flood above ran (that is, the faster the
    # loop), so the record would show the placement transient, not the wake-up path.
    per_thread = max(1, samples // threads)
    unrecorded = warmup // threads
    delays: list[float] = []
    paced_done = loop.create_future()

    def arrived(sent: float, record: bool) -> None:
        if not record:
            return
        delays.append(perf_counter() - sent)
        if len(delays) == per_thread * threads:
            paced_done.set_result(None)

    def paced() -> None:
        for i in range(unrecorded + per_thread):
            post(arrived, perf_counter(), i >= unrecorded)
            time.sleep(pace)

    senders = [in_thread(loop, paced, name=f"pacer-{i}") for i in range(threads)]
    await paced_done
    await asyncio.gather(*senders)
    return {
        "throughput": total / elapsed,
        "p50": percentile(delays, 50) * 1e3,
        "p99": percentile(delays, 99) * 1e3,
    }


async def threadsafe_1(posts: int, samples: int, warmup: int, pace: float) -> dict:
    return await _threadsafe(1, posts, samples, warmup, pace)


async def threadsafe_4(posts: int, samples: int, warmup: int, pace: float) -> dict:
    return await _threadsafe(4, posts, samples, warmup, pace)


async def _echo(value: int) -> int:
    return value


async def rcts(n: int) -> dict:
    loop = asyncio.get_running_loop()

    def client() -> float:
        submit = asyncio.run_coroutine_threadsafe
        for i in range(100):
            submit(_echo(i), loop).result(timeout=30)
        t0 = perf_counter()
        for i in range(n):
            submit(_echo(i), loop).result(timeout=30)
        return perf_counter() - t0

    elapsed = await in_thread(loop, client, name="rcts-client")
    return {"throughput": n / elapsed}


async def loop_lag(duration: float, threads: int, period: float) -> dict:
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def burn() -> int:
        x = 0
        while not stop.is_set():
            for i in range(2000):
                x += i
        return x

    jobs = [loop.run_in_executor(None, burn) for _ in range(threads)]
    try:
        await asyncio.sleep(0.05)
        samples = await periodic_lateness(loop, period, perf_counter() + duration)
    finally:
        stop.set()
    await asyncio.gather(*jobs)
    summary = lateness_summary(samples)
    return {"p99": summary["p99"], "extra": summary}


async def flood(duration: float, threads: int, period: float, backlog_cap: int) -> dict:
    loop = asyncio.get_running_loop()
    post = loop.call_soon_threadsafe
    ran = 0
    sent = [0] * threads
    waits = [0] * threads

    def count() -> None:
        nonlocal ran
        ran += 1

    def producer(me: int, deadline: float) -> None:
        while perf_counter() < deadline:
            if sum(sent) - ran < backlog_cap:
                for _ in range(100):
                    post(count)
                sent[me] += 100
            else:  # the backlog cap (a memory bound) is reached: let the loop catch up
                waits[me] += 1
                time.sleep(0.0005)

    deadline = perf_counter() + duration
    samples_future = periodic_lateness(loop, period, deadline)
    producers = [in_thread(loop, producer, i, deadline) for i in range(threads)]
    samples = await samples_future
    await asyncio.gather(*producers)
    total = sum(sent)
    drain_deadline = perf_counter() + 30
    while ran < total and perf_counter() < drain_deadline:
        await asyncio.sleep(0.001)
    summary = lateness_summary(samples)
    summary.update(posts_per_s=total / duration, posted=total, ran=ran, cap_waits=sum(waits))
    return {"p99": summary["p99"], "extra": summary}


def _run_job(workload: Workload, contender: str, params: dict, settings: dict) -> dict:
    make = loops.factory(contender, **workload.loop_options)
    with asyncio.Runner(loop_factory=make) as runner:
        result = runner.run(workload.func(**params))
        loop_type = type(runner.get_loop())
    result.setdefault("extra", {})["loop_type"] = f"{loop_type.__module__}.{loop_type.__qualname__}"
    return result


def _w(name, doc, metrics, func, params, quick, **kw) -> Workload:
    return Workload(name, doc, tuple(metrics), func, params, quick, **kw)


_TS = {"posts": 200_000, "samples": 2_000, "warmup": 1_000, "pace": 0.0002}
_TS_QUICK = {"posts": 20_000, "samples": 400, "warmup": 200, "pace": 0.0002}

WORKLOADS = (
    _w("call_soon", "call_soon of 500k no-op callbacks", [throughput("calls/s")],
       call_soon, {"n": 500_000}, {"n": 50_000}),
    _w("timers", "100k call_later (0-1 ms), half cancelled", [throughput("timers/s")],
       timers, {"n": 100_000}, {"n": 10_000}),
    _w("tasks", "gather of 100k trivial tasks", [throughput("tasks/s")],
       tasks, {"n": 100_000}, {"n": 10_000}),
    _w("executor_seq", "run_in_executor no-op, one after another", [throughput("calls/s")],
       executor_seq, {"n": 20_000}, {"n": 2_000}),
    _w("executor_wide", "run_in_executor no-op, 1000-wide gathers", [throughput("calls/s")],
       executor_wide, {"rounds": 30, "width": 1000}, {"rounds": 4, "width": 1000}),
    _w("executor_sleep", "run_in_executor time.sleep(1 ms), 64 in flight",
       [throughput("calls/s"), latency("p99")], executor_sleep,
       {"n": 4_000, "width": 64, "sleep": 0.001}, {"n": 640, "width": 64, "sleep": 0.001}),
    _w("threadsafe_1", "call_soon_threadsafe from 1 thread (latency: paced posts)",
       [throughput("posts/s"), latency("p50"), latency("p99")], threadsafe_1, _TS, _TS_QUICK),
    _w("threadsafe_4", "call_soon_threadsafe from 4 threads (latency: paced posts)",
       [throughput("posts/s"), latency("p50"), latency("p99")], threadsafe_4, _TS, _TS_QUICK),
    _w("rcts", "run_coroutine_threadsafe round trips from a thread",
       [throughput("round trips/s")], rcts, {"n": 10_000}, {"n": 1_000}),
    _w("loop_lag", "1 ms timer lateness, 8 executor threads burn CPU",
       [latency("p99", "lateness")], loop_lag, {"duration": 1.5, "threads": 8, "period": 0.001},
       {"duration": 0.4, "threads": 8, "period": 0.001}, loop_options={"executor_workers": 8}),
    _w("flood", "10 ms timer lateness, 4 threads flood call_soon_threadsafe",
       [latency("p99", "lateness")], flood,
       {"duration": 1.5, "threads": 4, "period": 0.01, "backlog_cap": 1_000_000},
       {"duration": 0.4, "threads": 4, "period": 0.01, "backlog_cap": 1_000_000}),
)  # fmt: skip


def loop_group(name: str, title: str, workloads: tuple[Workload, ...]) -> Group:
    """A group that compares the event loops (``loops.LOOPS``) on ``workloads``."""
    return Group(
        name=name,
        title=title,
        axis="loop",
        baseline=loops.BASELINE,
        contenders=loops.LOOPS,
        workloads=workloads,
        available=loops.unavailable,
        run_job=_run_job,
    )


GROUP = loop_group("loops", "Event loops (issue 2)", WORKLOADS)
