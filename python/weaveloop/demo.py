"""``python -m weaveloop.demo``: the five rules of asyncio + threads, on weaveloop.

Each rule runs once on weaveloop; then a short side-by-side against the stock loop
(same code, each loop in turn) shows what the Rust paths change.
"""

from __future__ import annotations

import asyncio
import threading
import time

import weaveloop
from weaveloop import sync


def _blocking_io(n: int) -> int:
    time.sleep(0.001)  # stands for a blocking library call
    return n * 2


async def rule1_offload_blocking_work() -> str:
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(*(loop.run_in_executor(None, _blocking_io, i) for i in range(8)))
    via_to_thread = await asyncio.to_thread(_blocking_io, 21)
    return f"8 blocking calls offloaded -> {results}; asyncio.to_thread -> {via_to_thread}"


async def rule2_explicit_pool() -> str:
    loop = asyncio.get_running_loop()
    pool = weaveloop.ThreadPoolExecutor(max_workers=4, thread_name_prefix="demo")
    names = await asyncio.gather(
        *(loop.run_in_executor(pool, lambda: threading.current_thread().name) for _ in range(4))
    )
    squares = list(pool.map(lambda x: x * x, range(5)))
    pool.shutdown(wait=True)
    try:
        pool.submit(print)
    except RuntimeError as e:
        after = f"submit after shutdown -> RuntimeError({e})"
    return f"workers {sorted(set(names))}, map -> {squares}; {after}"


async def rule3_from_another_thread() -> str:
    loop = asyncio.get_running_loop()

    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    def thread_body(out: list) -> None:
        fut = asyncio.run_coroutine_threadsafe(add(2, 3), loop)
        out.append(fut.result(timeout=5))

    out: list = []
    t = threading.Thread(target=thread_body, args=(out,))
    t.start()
    await asyncio.to_thread(t.join)
    return f"run_coroutine_threadsafe(add(2, 3)).result() in a thread -> {out[0]}"


async def rule4_shared_state() -> str:
    counter = 0
    lock = sync.Lock()  # one lock for threads (`with`) and coroutines (`async with`)

    def bump_in_thread(times: int) -> None:
        nonlocal counter
        for _ in range(times):
            with lock:
                counter += 1

    async def bump_in_coroutine(times: int) -> None:
        nonlocal counter
        for _ in range(times):
            async with lock:
                counter += 1
            await asyncio.sleep(0)

    await asyncio.gather(
        *(asyncio.to_thread(bump_in_thread, 1000) for _ in range(2)),
        *(bump_in_coroutine(1000) for _ in range(2)),
    )
    try:
        lock.acquire()  # the trap of rule 4: a blocking call on the loop's thread
    except RuntimeError as e:
        trap = str(e).split(";")[0]
    return (
        f"2 threads + 2 coroutines x 1000 increments under one weaveloop.sync.Lock -> "
        f"{counter}; lock.acquire() in a coroutine -> RuntimeError('{trap}')"
    )


async def rule5_thread_affinity() -> str:
    loop = asyncio.get_running_loop()
    caught: list[str] = []

    def wrong_thread() -> None:
        try:
            loop.call_soon(print, "never")
        except RuntimeError as e:
            caught.append(str(e))
        loop.call_soon_threadsafe(lambda: None)  # the right way

    t = threading.Thread(target=wrong_thread)
    t.start()
    await asyncio.to_thread(t.join)
    return f"call_soon from a foreign thread -> RuntimeError({caught[0]!r})"


async def _all_rules() -> None:
    rules = [
        ("1 blocking work goes to run_in_executor", rule1_offload_blocking_work),
        ("2 an explicit pool", rule2_explicit_pool),
        ("3 from another thread: run_coroutine_threadsafe", rule3_from_another_thread),
        ("4 shared state needs a lock", rule4_shared_state),
        ("5 a loop belongs to one thread", rule5_thread_affinity),
    ]
    for title, rule in rules:
        print(f"rule {title}:\n    {await rule()}")


# -- side by side -------------------------------------------------------------------


async def _executor_round_trips(n: int) -> float:
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    for _ in range(n):
        await loop.run_in_executor(None, int)
    return n / (time.perf_counter() - t0)


async def _threadsafe_posts(n: int) -> float:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)

    def poster() -> None:
        for _ in range(n):
            loop.call_soon_threadsafe(tick)

    t0 = time.perf_counter()
    threading.Thread(target=poster).start()
    await done
    return n / (time.perf_counter() - t0)


async def _timers(n: int) -> float:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left = n

    def fire() -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set_result(None)

    t0 = time.perf_counter()
    for i in range(n):
        loop.call_later((i % 100) * 1e-5, fire)
    await done
    return n / (time.perf_counter() - t0)


def _side_by_side() -> None:
    workloads = [
        ("run_in_executor round trips/s", _executor_round_trips, 5000),
        ("call_soon_threadsafe posts/s", _threadsafe_posts, 100_000),
        ("call_later timers/s", _timers, 100_000),
    ]
    print("\nside by side (higher is better; one short run each, not a benchmark):")
    print(f"    {'workload':32s} {'asyncio':>12s} {'weaveloop':>12s} {'ratio':>7s}")
    for title, work, n in workloads:
        stock = asyncio.run(work(n))
        ours = weaveloop.run(work(n))
        print(f"    {title:32s} {stock:12,.0f} {ours:12,.0f} {ours / stock:6.1f}x")
    print("full benchmark, with uvloop: python -m weaveloop.bench")


def main() -> None:
    print("weaveloop demo: the five rules of asyncio + threads (DESIGN.md), on weaveloop\n")
    weaveloop.run(_all_rules())
    _side_by_side()


if __name__ == "__main__":
    main()
