"""Memory soak (marked ``soak``, skipped by default; run with ``pytest -m soak tests``).

RSS after 1,000,000 run_in_executor calls, and after 1,000,000 call_soon_threadsafe posts,
stays within 10 MiB of its level after the first 10,000 (likewise 1,000,000 far timers
scheduled and cancelled, the wait_for pattern). weaveloop only: the promise is about
weaveloop's own queues, pool, timer heap and handles.
"""

from __future__ import annotations

import asyncio
import gc
import threading

import psutil
import pytest
from _support import SAFETY, LoopThread, join_or_fail, start_thread

pytestmark = pytest.mark.soak

MiB = 1 << 20
TOTAL = 1_000_000
WARMUP = 10_000
BATCH = 1_000
BUDGET = 10 * MiB


def _rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def test_run_in_executor_rss_is_flat(wloop):
    lp = wloop

    async def batch(sequential: bool):
        if sequential:
            for _ in range(BATCH):
                await lp.run_in_executor(None, int)
        else:
            await asyncio.gather(*[lp.run_in_executor(None, int) for _ in range(BATCH)])

    baseline = None
    for i in range(TOTAL // BATCH):
        # Alternate the sequential and the wide shape: both paths are exercised.
        lp.run_until_complete(batch(sequential=i % 2 == 0))
        if (i + 1) * BATCH == WARMUP:
            baseline = _rss()
    final = _rss()
    growth = final - baseline
    print(f"run_in_executor: baseline {baseline / MiB:.1f} MiB, growth {growth / MiB:.2f} MiB")
    assert growth <= BUDGET


def test_call_soon_threadsafe_rss_is_flat(wloop):
    lp = wloop
    lt = LoopThread(lp).start()
    counter = [0]
    sizes = {}

    def callback():
        counter[0] += 1

    def poster():
        for window in range(TOTAL // WARMUP):
            for _ in range(WARMUP):
                lp.call_soon_threadsafe(callback)
            drained = threading.Event()
            lp.call_soon_threadsafe(drained.set)
            if not drained.wait(SAFETY):
                raise AssertionError("posts were not drained (safety net)")
            if window == 0:
                sizes["baseline"] = _rss()
        sizes["final"] = _rss()

    try:
        join_or_fail(start_thread(poster), timeout=600)
    finally:
        lt.stop()
    assert counter[0] == TOTAL
    baseline, growth = sizes["baseline"], sizes["final"] - sizes["baseline"]
    print(f"call_soon_threadsafe: baseline {baseline / MiB:.1f} MiB, growth {growth / MiB:.2f} MiB")
    assert growth <= BUDGET


def test_cancelled_far_timers_rss_is_flat(wloop):
    lp = wloop

    async def main():
        baseline = None
        for i in range(TOTAL // BATCH):
            for _ in range(BATCH):
                lp.call_later(3600, int).cancel()  # never due while the test runs
            await asyncio.sleep(0)
            if (i + 1) * BATCH == WARMUP:
                baseline = _rss()
        return baseline, _rss()

    baseline, final = lp.run_until_complete(main())
    growth = final - baseline
    print(f"cancelled timers: baseline {baseline / MiB:.1f} MiB, growth {growth / MiB:.2f} MiB")
    assert growth <= BUDGET
