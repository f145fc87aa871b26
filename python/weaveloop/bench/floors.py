"""Floors of this machine that no event loop can go below, measured without any loop.

``python -m weaveloop.bench.floors`` prints them; they put the loop-lag and
cross-thread targets of the benchmark in proportion:

- timer jitter: a plain thread sleeping 1 ms at a time (no loop, no other thread, the
  GIL uncontended) and how late each wake-up comes. Its worst sample is what the
  kernel and the VM alone add, so a loop's "worst lateness" cannot be reliably below it.
- cross-thread ceiling: one thread appends N no-op callables to a ``deque`` as fast as
  it can while this thread pops and calls them, the shape of the ``threadsafe_1``
  workload with nothing of a loop left (no handle objects, no wake-ups, no context).
  Then the same with a ``contextvars.copy_context()`` per item run through
  ``Context.run``, which is what asyncio's ``call_soon_threadsafe`` semantics ask for.

Like the benchmark, numbers are medians of a few runs, and worth comparing only to
other numbers taken on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import collections
import contextvars
import statistics
import threading
import time
from time import perf_counter


def timer_jitter(period: float, duration: float) -> dict:
    """Lateness of ``time.sleep(period)`` wake-ups in a thread of its own."""
    samples: list[float] = []

    def body() -> None:
        end = perf_counter() + duration
        while perf_counter() < end:
            due = perf_counter() + period
            time.sleep(period)
            samples.append(perf_counter() - due)

    thread = threading.Thread(target=body, name="jitter")
    thread.start()
    thread.join()
    samples.sort()
    return {
        "p99_ms": samples[int(len(samples) * 0.99)] * 1e3,
        "worst_ms": samples[-1] * 1e3,
        "samples": len(samples),
    }


def _noop() -> None:
    return None


def cross_thread_ceiling(n: int, with_context: bool) -> float:
    """Items per second through a deque from a posting thread to this thread."""
    queue: collections.deque = collections.deque()
    go = threading.Event()

    def post_plain() -> None:
        append = queue.append
        go.wait()
        for _ in range(n):
            append(_noop)

    def post_with_context() -> None:
        append, copy = queue.append, contextvars.copy_context
        go.wait()
        for _ in range(n):
            append((_noop, copy()))

    poster = threading.Thread(target=post_with_context if with_context else post_plain)
    poster.start()
    pop, ran = queue.popleft, 0
    t0 = perf_counter()
    go.set()
    while ran < n:
        try:
            item = pop()
        except IndexError:
            continue
        if with_context:
            item[1].run(item[0])
        else:
            item()
        ran += 1
    elapsed = perf_counter() - t0
    poster.join()
    return n / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m weaveloop.bench.floors")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    args = parser.parse_args(argv)
    duration, n = (0.5, 100_000) if args.quick else (3.0, 500_000)

    jitter = [timer_jitter(0.001, duration) for _ in range(args.runs)]
    p99 = statistics.median(j["p99_ms"] for j in jitter)
    worst = [round(j["worst_ms"], 2) for j in jitter]
    print(f"timer jitter, 1 ms sleeps in a plain thread for {duration:g} s:")
    print(f"  p99 {p99:.3f} ms (median of {args.runs} runs); worst per run (ms): {worst}")

    for with_context, what in ((False, "no-op callables"), (True, "callables + a context copy")):
        rates = [cross_thread_ceiling(n, with_context) for _ in range(args.runs)]
        rate = statistics.median(rates) / 1e6
        print(f"cross-thread ceiling, {what} through a deque: {rate:.2f}M/s")


if __name__ == "__main__":
    main()
