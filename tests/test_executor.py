"""The executor: weaveloop.ThreadPoolExecutor's API, run_in_executor, to_thread, fork.

Pool API tests run on weaveloop.ThreadPoolExecutor AND on concurrent.futures'
ThreadPoolExecutor (the oracle); loop tests run on both loops. Tests that only weaveloop
can pass say why. Blocking jobs wait on threading.Events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import re
import subprocess
import sys
import textwrap
import threading

import pytest
import weaveloop
from _support import SAFETY, join_or_fail, run, wait_or_fail

POOLS = {
    "weaveloop": weaveloop.ThreadPoolExecutor,
    "stdlib": concurrent.futures.ThreadPoolExecutor,
}


@pytest.fixture(params=list(POOLS), ids=[f"{k}-pool" for k in POOLS])
def pool_cls(request):
    return POOLS[request.param]


@pytest.fixture
def make_pool(pool_cls):
    pools = []

    def make(*args, **kwargs):
        p = pool_cls(*args, **kwargs)
        pools.append(p)
        return p

    yield make
    for p in pools:
        p.shutdown(wait=True, cancel_futures=True)


class Blocker:
    """A job that signals when it starts and then blocks until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self, result="released"):
        self.thread = threading.current_thread()
        self.started.set()
        if not self.release.wait(SAFETY):
            raise TimeoutError("Blocker was never released (safety net)")
        return result


class InlineExecutor(concurrent.futures.Executor):
    """A foreign Executor: runs jobs inline, to exercise the generic path."""

    def submit(self, fn, /, *args, **kwargs):
        f = concurrent.futures.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - forwarded to the future
            f.set_exception(e)
        return f


# -- pool API (weaveloop pool vs stdlib pool) -------------------------------------------


def test_pool_is_an_executor(pool_cls):
    assert issubclass(pool_cls, concurrent.futures.Executor)


def test_broken_thread_pool_is_the_stdlib_exception():
    assert issubclass(weaveloop.BrokenThreadPool, concurrent.futures.BrokenExecutor)


def test_submit_returns_a_future_with_the_result(make_pool):
    pool = make_pool(max_workers=2)
    f = pool.submit(lambda a, b=0: a + b, 40, b=2)
    assert isinstance(f, concurrent.futures.Future)
    assert f.result(SAFETY) == 42


def test_submit_passes_a_keyword_named_fn(make_pool):
    pool = make_pool(max_workers=1)
    assert pool.submit(lambda fn: fn * 2, fn=21).result(SAFETY) == 42


def test_submit_exception_goes_to_the_future(make_pool):
    pool = make_pool(max_workers=1)

    def job():
        raise KeyError("job")

    f = pool.submit(job)
    with pytest.raises(KeyError, match="job"):
        f.result(SAFETY)
    assert isinstance(f.exception(), KeyError)
    # The worker survives a failing job.
    assert pool.submit(lambda: "alive").result(SAFETY) == "alive"


def test_submit_from_inside_a_job(make_pool):
    pool = make_pool(max_workers=2)
    inner = pool.submit(lambda: pool.submit(lambda: "inner")).result(SAFETY)
    assert inner.result(SAFETY) == "inner"


def test_map_keeps_order_and_zips_iterables(make_pool):
    pool = make_pool(max_workers=4)
    assert list(pool.map(pow, range(20), [2] * 20)) == [i**2 for i in range(20)]


def test_map_raises_the_job_exception_when_iterated(make_pool):
    pool = make_pool(max_workers=2)
    results = pool.map(lambda x: 1 // x, [1, 0, 2])
    assert next(results) == 1
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(make_pool):
    pool = make_pool(max_workers=1)
    blocker = Blocker()
    results = pool.map(blocker, ["x"], timeout=0)
    wait_or_fail(blocker.started, "the blocked job to start")
    with pytest.raises(TimeoutError):
        next(results)
    blocker.release.set()


def test_context_manager_shuts_down_and_waits(pool_cls):
    with pool_cls(max_workers=2) as pool:
        f = pool.submit(threading.current_thread)
    worker = f.result(SAFETY)
    join_or_fail(worker)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(lambda: None)


def test_submit_after_shutdown_raises(make_pool):
    pool = make_pool(max_workers=1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="^cannot schedule new futures after shutdown$"):
        pool.submit(lambda: None)
    pool.shutdown()  # idempotent


def test_shutdown_wait_waits_for_running_jobs_and_joins_workers(make_pool):
    pool = make_pool(max_workers=2)
    blocker = Blocker()
    f = pool.submit(blocker)
    wait_or_fail(blocker.started, "the job to start")
    threading.Thread(target=blocker.release.set).start()
    pool.shutdown(wait=True)
    assert f.done() and f.result() == "released"
    assert not blocker.thread.is_alive()


def test_shutdown_cancel_futures_cancels_queued_jobs(make_pool):
    pool = make_pool(max_workers=1)
    blocker = Blocker()
    first = pool.submit(blocker)
    wait_or_fail(blocker.started, "the job to start")
    ran = []
    queued = [pool.submit(ran.append, i) for i in range(5)]
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(q.cancelled() for q in queued)
    blocker.release.set()
    assert first.result(SAFETY) == "released"
    join_or_fail(blocker.thread)
    assert ran == []


def test_future_cancelled_before_start_never_runs(make_pool):
    pool = make_pool(max_workers=1)
    blocker = Blocker()
    pool.submit(blocker)
    wait_or_fail(blocker.started, "the job to start")
    ran = []
    victim = pool.submit(ran.append, "victim")
    assert victim.cancel()
    after = pool.submit(ran.append, "after")
    blocker.release.set()
    after.result(SAFETY)
    assert victim.cancelled()
    assert ran == ["after"]


def test_running_future_cannot_be_cancelled(make_pool):
    pool = make_pool(max_workers=1)
    blocker = Blocker()
    f = pool.submit(blocker)
    wait_or_fail(blocker.started, "the job to start")
    assert f.running()
    assert not f.cancel()
    blocker.release.set()
    assert f.result(SAFETY) == "released"


def test_default_max_workers_is_the_stdlib_default(make_pool):
    assert make_pool()._max_workers == min(32, (os.cpu_count() or 1) + 4)
    assert make_pool(max_workers=3)._max_workers == 3


def test_max_workers_bounds_concurrency(make_pool):
    pool = make_pool(max_workers=2)
    barrier = threading.Barrier(2, timeout=SAFETY)
    lock = threading.Lock()
    active = peak = 0

    def job():
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        barrier.wait()  # proves two jobs run at once
        with lock:
            active -= 1

    for f in [pool.submit(job) for _ in range(10)]:
        f.result(SAFETY)
    assert peak == 2


def test_workers_are_real_named_threads(make_pool):
    pool = make_pool(max_workers=2, thread_name_prefix="wl-test")

    def job():
        me = threading.current_thread()
        return me, me in threading.enumerate(), threading.get_ident() == me.ident

    worker, enumerated, same_ident = pool.submit(job).result(SAFETY)
    assert type(worker) is threading.Thread
    assert enumerated and same_ident
    assert re.fullmatch(r"wl-test_\d+", worker.name), worker.name
    assert worker in threading.enumerate()  # an idle worker stays listed


def test_default_thread_names_follow_the_stdlib_pattern(make_pool):
    pool = make_pool(max_workers=1)
    name = pool.submit(lambda: threading.current_thread().name).result(SAFETY)
    assert re.fullmatch(r"ThreadPoolExecutor-\d+_\d+", name), name


def test_initializer_runs_in_each_worker_with_initargs(make_pool):
    seen = []
    lock = threading.Lock()

    def init(tag, n):
        with lock:
            seen.append((tag, n, threading.current_thread().name))

    pool = make_pool(max_workers=1, initializer=init, initargs=("tag", 7))
    worker = pool.submit(lambda: threading.current_thread().name).result(SAFETY)
    assert seen == [("tag", 7, worker)]


def test_initializer_failure_breaks_the_pool(make_pool, caplog):
    def init():
        raise ValueError("init failed")

    pool = make_pool(max_workers=1, initializer=init)
    f = pool.submit(lambda: "never")
    with pytest.raises(weaveloop.BrokenThreadPool):
        f.result(SAFETY)
    with pytest.raises(weaveloop.BrokenThreadPool):
        pool.submit(lambda: "never")


def test_workers_are_joined_at_interpreter_exit(pool_cls):
    # A job still running when the main thread ends must finish before the process exits.
    module = pool_cls.__module__.split(".")[0]
    code = textwrap.dedent(
        f"""
        import threading, time
        import {module}
        from {pool_cls.__module__} import {pool_cls.__name__} as Pool
        pool = Pool(max_workers=1)
        started = threading.Event()
        def job():
            started.set()
            time.sleep(0.2)  # gives an unjoined worker time to be killed: not a sync point
            print("job finished", flush=True)
        pool.submit(job)
        started.wait()
        print("main exiting", flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["main", "exiting", "job", "finished"]


# -- run_in_executor and to_thread (both loops) ------------------------------------------


def test_run_in_executor_default_pool(loop):
    async def main():
        return await loop.run_in_executor(
            None, lambda a, b: (a + b, threading.current_thread()), 1, 2
        )

    (total, worker) = run(loop, main())
    assert total == 3
    assert re.fullmatch(r"asyncio_\d+", worker.name), worker.name
    assert type(worker) is threading.Thread


def test_run_in_executor_explicit_pools(loop, make_pool):
    pool = make_pool(max_workers=2, thread_name_prefix="explicit")

    async def main():
        return await loop.run_in_executor(pool, lambda: threading.current_thread().name)

    assert run(loop, main()).startswith("explicit_")


def test_run_in_executor_foreign_executor(loop):
    async def main():
        return await loop.run_in_executor(InlineExecutor(), lambda x: x * 3, 5)

    assert run(loop, main()) == 15


def test_run_in_executor_exception(loop):
    def job():
        raise LookupError("job failed")

    async def main():
        with pytest.raises(LookupError, match="job failed"):
            await loop.run_in_executor(None, job)
        return "after"

    assert run(loop, main()) == "after"


def test_run_in_executor_wide_gather(loop):
    async def main():
        futs = [loop.run_in_executor(None, pow, i, 2) for i in range(2000)]
        return await asyncio.gather(*futs)

    assert run(loop, main()) == [i**2 for i in range(2000)]


def test_run_in_executor_returns_an_asyncio_future(loop):
    async def main():
        fut = loop.run_in_executor(None, int)
        assert isinstance(fut, asyncio.Future)
        assert fut.get_loop() is loop
        return await fut

    assert run(loop, main()) == 0


def test_run_in_executor_after_pool_shutdown(loop, make_pool):
    pool = make_pool(max_workers=1)
    pool.shutdown()

    async def main():
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            loop.run_in_executor(pool, int)

    run(loop, main())


def test_to_thread_propagates_context_and_arguments(loop):
    var = contextvars.ContextVar("var", default="unset")

    def job(a, *, b):
        return var.get(), a, b, threading.current_thread().name

    async def main():
        var.set("from-task")
        return await asyncio.to_thread(job, 1, b=2)

    value, a, b, name = run(loop, main())
    assert (value, a, b) == ("from-task", 1, 2)
    assert name.startswith("asyncio_")


def test_executor_cancelled_before_start_never_runs(loop, make_pool):
    pool = make_pool(max_workers=1)
    blocker = Blocker()
    ran = []

    async def main():
        started = loop.create_future()

        def block():
            loop.call_soon_threadsafe(started.set_result, None)
            return blocker()

        first = loop.run_in_executor(pool, block)
        await started
        victim = loop.run_in_executor(pool, ran.append, "victim")
        victim.cancel()
        await asyncio.sleep(0)  # let the cancellation reach the pool (stock needs a turn)
        blocker.release.set()
        await loop.run_in_executor(pool, ran.append, "after")
        assert victim.cancelled()
        return await first

    assert run(loop, main()) == "released"
    assert ran == ["after"]


def test_cancelling_the_awaiting_future_of_a_running_job_is_quiet(loop, make_pool):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    pool = make_pool(max_workers=1)
    blocker = Blocker()

    async def main():
        fut = loop.run_in_executor(pool, blocker)
        await loop.run_in_executor(None, blocker.started.wait, SAFETY)
        fut.cancel()
        blocker.release.set()
        # Same single worker: this completes after the cancelled job's completion arrived.
        assert await loop.run_in_executor(pool, int) == 0
        for _ in range(3):
            await asyncio.sleep(0)
        return fut.cancelled()

    assert run(loop, main()) is True
    assert contexts == []


def test_set_default_executor_with_a_stdlib_pool(loop):
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mine")
    try:
        loop.set_default_executor(pool)

        async def main():
            return await loop.run_in_executor(None, lambda: threading.current_thread().name)

        assert run(loop, main()).startswith("mine_")
    finally:
        pool.shutdown()


def test_set_default_executor_rejects_non_executors(loop):
    with pytest.raises(TypeError):
        loop.set_default_executor(object())


def test_shutdown_default_executor(loop):
    async def main():
        worker = await loop.run_in_executor(None, threading.current_thread)
        await loop.shutdown_default_executor()
        with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
            loop.run_in_executor(None, int)
        return worker

    worker = run(loop, main())
    assert not worker.is_alive()


def test_shutdown_default_executor_without_executor(loop):
    assert run(loop, loop.shutdown_default_executor()) is None


def test_shutdown_default_executor_timeout(loop, loop_kind):
    if loop_kind == "asyncio" and sys.version_info < (3, 12):
        pytest.skip("shutdown_default_executor(timeout) is new in Python 3.12")
    blocker = Blocker()

    async def main():
        job = loop.run_in_executor(None, blocker)
        await loop.run_in_executor(InlineExecutor(), blocker.started.wait, SAFETY)
        with pytest.warns(RuntimeWarning):
            await loop.shutdown_default_executor(timeout=0.05)
        assert not job.done()  # returned while the job still runs
        blocker.release.set()
        return await job

    assert run(loop, main()) == "released"


def test_close_with_a_job_in_flight_does_not_hang_or_leak(loop):
    blocker = Blocker()
    loop.run_in_executor(None, blocker)
    wait_or_fail(blocker.started, "the job to start")
    loop.close()  # must return while the job is still blocked
    assert blocker.thread.is_alive()
    blocker.release.set()
    join_or_fail(blocker.thread)


# -- weaveloop only ------------------------------------------------------------------------


def test_default_executor_is_the_weaveloop_pool(wloop):
    # The stock loop's default pool is concurrent.futures'; weaveloop's is its own.
    run(wloop, wloop.run_in_executor(None, int))
    assert isinstance(wloop._default_executor, weaveloop.ThreadPoolExecutor)
    assert wloop._default_executor._max_workers == min(32, (os.cpu_count() or 1) + 4)


def test_executor_workers_option_sizes_the_default_pool():
    # A weaveloop loop option; the stock loop has no such option.
    lp = weaveloop.new_event_loop(executor_workers=3)
    try:
        run(lp, lp.run_in_executor(None, int))
        assert lp._default_executor._max_workers == 3
    finally:
        lp.close()


def test_set_default_executor_accepts_a_weaveloop_pool(wloop):
    # The stock loop only accepts concurrent.futures.ThreadPoolExecutor instances.
    pool = weaveloop.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wl")
    try:
        wloop.set_default_executor(pool)
        name = run(wloop, wloop.run_in_executor(None, lambda: threading.current_thread().name))
        assert name.startswith("wl_")
    finally:
        pool.shutdown()


def test_default_pool_job_cancelled_before_start_never_runs():
    # The fast path (weaveloop pool as default executor) has its own cancellation route.
    lp = weaveloop.new_event_loop(executor_workers=1)
    blocker = Blocker()
    ran = []

    async def main():
        first = lp.run_in_executor(None, blocker)
        await lp.run_in_executor(InlineExecutor(), blocker.started.wait, SAFETY)
        victims = [lp.run_in_executor(None, ran.append, i) for i in range(10)]
        for v in victims:
            v.cancel()
        await asyncio.sleep(0)
        blocker.release.set()
        await lp.run_in_executor(None, ran.append, "after")
        return await first

    try:
        assert run(lp, main()) == "released"
        assert ran == ["after"]
    finally:
        lp.close()


def test_close_with_jobs_in_flight_settles_their_futures():
    # The stock loop leaves such futures pending forever; weaveloop promises they settle.
    lp = weaveloop.new_event_loop(executor_workers=1)
    blocker = Blocker()
    running = lp.run_in_executor(None, blocker)
    queued = lp.run_in_executor(None, int)
    wait_or_fail(blocker.started, "the job to start")
    lp.close()
    blocker.release.set()
    join_or_fail(blocker.thread)
    assert running.done()
    assert queued.done()


FORK_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, signal, sys, threading, traceback
    KIND = sys.argv[1]
    if KIND == "weaveloop":
        import weaveloop

    def make():
        return weaveloop.new_event_loop() if KIND == "weaveloop" else asyncio.SelectorEventLoop()

    def use(loop):
        async def main():
            name = await loop.run_in_executor(None, lambda: threading.current_thread().name)
            total = await asyncio.to_thread(sum, [1, 2, 3])
            fut = loop.create_future()
            t = threading.Thread(target=loop.call_soon_threadsafe, args=(fut.set_result, "p"))
            t.start()
            posted = await fut
            t.join()
            assert name.startswith("asyncio_") and total == 6 and posted == "p", (name, total)
        loop.run_until_complete(asyncio.wait_for(main(), 10))

    parent_loop = make()
    use(parent_loop)  # the parent's default pool now has live threads
    if KIND == "weaveloop":
        pool = weaveloop.ThreadPoolExecutor(max_workers=2)
        assert pool.submit(int).result(10) == 0
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)  # safety net: a hung child dies instead of lingering
        try:
            fresh = make()
            use(fresh)
            fresh.close()
            if KIND == "weaveloop":
                # Inherited loop and pool are reset after fork (the stock pool is not:
                # an inherited concurrent.futures pool can hang in the child).
                use(parent_loop)
                assert pool.submit(lambda: 7).result(10) == 7
                parent_loop.close()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    use(parent_loop)
    parent_loop.close()
    print("child exit", os.waitstatus_to_exitcode(status))
    """
)


def test_fork_child_gets_working_loop_and_pool(loop_kind):
    out = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, loop_kind],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "child exit 0", out.stderr
