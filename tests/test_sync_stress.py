"""Bounded stress tests of weaveloop.sync (issue 4, item 5): threads and coroutines on
two loops contending the same objects. Exact results, no deadlock; every wait has a
safety timeout. Run on weaveloop loops (the stock loop is covered by the other files).
"""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
import weaveloop.sync as ws
from _support import SAFETY, join_or_fail, start_thread
from _sync_support import SYNC_LOOPS, ThreadLoop

FACTORY = SYNC_LOOPS["weaveloop"]


def test_counter_under_one_lock_threads_and_coroutines_on_two_loops():
    """10^5 increments in all, from 2 threads and 2x4 coroutines on 2 loops."""
    lock = ws.Lock()
    count = [0]
    per_thread, per_coro, coros_per_loop = 30_000, 5_000, 4
    total = 2 * per_thread + 2 * coros_per_loop * per_coro
    assert total == 100_000
    go = threading.Event()

    def thread_worker():
        go.wait(SAFETY)
        for _ in range(per_thread):
            with lock:
                count[0] += 1

    async def coro_worker():
        for i in range(per_coro):
            async with lock:
                v = count[0]
                if i % 64 == 0:
                    await asyncio.sleep(0)  # hold the lock across a suspension now and then
                count[0] = v + 1

    async def loop_main():
        await asyncio.gather(*(coro_worker() for _ in range(coros_per_loop)))

    loops = [ThreadLoop(FACTORY), ThreadLoop(FACTORY)]
    try:
        futs = [lt.submit(loop_main()) for lt in loops]
        threads = [start_thread(thread_worker) for _ in range(2)]
        go.set()
        for t in threads:
            t.join(60)
            assert not t.is_alive(), "deadlock"
        for f in futs:
            f.result(60)
    finally:
        for lt in loops:
            lt.close()
    assert count[0] == total
    assert not lock.locked() and lock._waiting() == 0


def test_million_items_four_thread_producers_coroutine_consumers_two_loops():
    """10^6 items, 4 thread producers -> coroutine consumers on 2 loops: nothing lost or
    duplicated, each producer's order kept (per consumer)."""
    n_producers, per_producer = 4, 250_000
    q = ws.Queue(maxsize=1000)
    stop = object()
    consumers_per_loop = 2

    def producer(p):
        put = q.put
        for i in range(per_producer):
            put((p, i))

    async def consumer():
        get = q.aio.get
        last = [-1] * n_producers
        seen = 0
        while (item := await get()) is not stop:
            p, i = item
            assert i > last[p], "a producer's order was not kept"
            last[p] = i
            seen += 1
        return seen

    async def loop_main():
        return await asyncio.gather(*(consumer() for _ in range(consumers_per_loop)))

    loops = [ThreadLoop(FACTORY), ThreadLoop(FACTORY)]
    try:
        futs = [lt.submit(loop_main()) for lt in loops]
        producers = [start_thread(producer, p) for p in range(n_producers)]
        for t in producers:
            t.join(120)
            assert not t.is_alive(), "producer stuck"
        for _ in range(len(loops) * consumers_per_loop):
            q.put(stop)
        seen = [n for f in futs for n in f.result(120)]
    finally:
        for lt in loops:
            lt.close()
    assert sum(seen) == n_producers * per_producer
    assert q.qsize() == 0


def test_thousand_coroutine_waiters_cancelled_at_random_while_threads_hold():
    """1,000 coroutine waiters on a semaphore, cancelled at random while threads take and
    release it: the semaphore stays usable and its count exact."""
    sem = ws.Semaphore(2)
    rng = random.Random(4)
    stop = threading.Event()

    def holder():
        while not stop.is_set():
            with sem:
                pass

    async def waiter():
        async with sem:
            await asyncio.sleep(0)
        return True

    async def loop_main(seed):
        r = random.Random(seed)
        tasks = [asyncio.ensure_future(waiter()) for _ in range(500)]
        for _ in range(3):
            await asyncio.sleep(0)
        for t in tasks:
            if r.random() < 0.5:
                t.cancel()
            if r.random() < 0.1:
                await asyncio.sleep(0)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return sum(r is True for r in results), sum(
            isinstance(r, asyncio.CancelledError) for r in results
        )

    loops = [ThreadLoop(FACTORY), ThreadLoop(FACTORY)]
    threads = [start_thread(holder) for _ in range(2)]
    try:
        futs = [lt.submit(loop_main(rng.random())) for lt in loops]
        outcomes = [f.result(60) for f in futs]
    finally:
        stop.set()
        for t in threads:
            t.join(SAFETY)
        for lt in loops:
            lt.close()
    assert sum(a + c for a, c in outcomes) == 1000
    assert sem._value == 2 and sem._waiting() == 0
    assert sem.acquire(timeout=SAFETY) and sem.acquire(timeout=SAFETY)
    assert not sem.acquire(False)


def test_maxsize_changed_at_random_while_threads_and_a_coroutine_put_and_get():
    """10^4 items through a Queue whose maxsize two other threads keep changing (bounded,
    unbounded, below qsize): nothing lost or duplicated, each producer's order kept, and
    once quiet the queue holds exactly its final maxsize."""
    q = ws.Queue(4)
    per_producer, producers = 5_000, 2
    done_producing = threading.Event()

    def producer(p):
        for i in range(per_producer):
            q.put((p, i), timeout=SAFETY)

    def resizer(rng):
        while not done_producing.is_set():
            q.maxsize = rng.choice((1, 2, 3, 8, 0, 5, 1))

    def thread_consumer(out):
        while (item := q.get(timeout=SAFETY)) is not None:
            out.append(item)

    async def coro_consumer():
        out = []
        while (item := await q.aio.get()) is not None:
            out.append(item)
        return out

    lt = ThreadLoop(FACTORY)
    try:
        by_thread: list = []
        workers = [start_thread(producer, p) for p in range(producers)]
        resizers = [start_thread(resizer, random.Random(seed)) for seed in (7, 8)]
        consumer = start_thread(thread_consumer, by_thread)
        by_coro = lt.submit(coro_consumer())
        for w in workers:
            join_or_fail(w)
        done_producing.set()
        for r in resizers:
            r.join(SAFETY)
        q.maxsize = 0
        q.put(None)
        q.put(None)
        consumer.join(SAFETY)
        got_by_coro = by_coro.result(SAFETY)
    finally:
        lt.close()
    for got in (by_thread, got_by_coro):
        for p in range(producers):
            seq = [i for (pp, i) in got if pp == p]
            assert seq == sorted(seq), "a producer's order was not kept"
    everything = sorted(by_thread + got_by_coro)
    assert everything == sorted((p, i) for p in range(producers) for i in range(per_producer))
    # Quiet and empty: the capacity is exactly the last maxsize.
    assert q.qsize() == 0
    q.maxsize = 3
    for i in range(3):
        q.put_nowait(i)
    with pytest.raises(ws.QueueFull):
        q.put_nowait(3)
