"""run_in_executor, to_thread and the default executor, on weaveloop and the stock loop.

Differential (loops x pools) unless a test says why it is weaveloop only; includes closing
a loop with jobs in flight and the after-fork reset. Blocking jobs wait on events.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import re
import sys
import textwrap
import threading
import traceback

import pytest
import weaveloop
from _support import (
    SAFETY,
    Blocker,
    InlineExecutor,
    SettlingPause,
    assert_fork_script_passes,
    join_or_fail,
    run,
    stdlib_default_workers,
    wait_or_fail,
)
from _sync_support import wait_until

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
        with pytest.raises(LookupError, match="job failed") as raised:
            await loop.run_in_executor(None, job)
        # The traceback reaches into the worker, down to the frame that raised.
        assert traceback.extract_tb(raised.value.__traceback__)[-1].name == "job"
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


def test_run_in_executor_does_not_propagate_context(loop):
    # Unlike to_thread, run_in_executor runs the function outside the caller's context.
    var = contextvars.ContextVar("var", default="unset")

    async def main():
        var.set("from-task")
        return await loop.run_in_executor(None, var.get)

    assert run(loop, main()) == "unset"


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


async def _occupied(loop, pool, blocker):
    """The future of a job holding `pool`'s one worker in `blocker`, once it has begun."""
    started = loop.create_future()

    def block():
        loop.call_soon_threadsafe(started.set_result, None)
        return blocker()

    first = loop.run_in_executor(pool, block)
    await started
    return first


def test_executor_cancelled_before_start_never_runs(loop, make_pool):
    pool = make_pool(max_workers=1)
    blocker = Blocker()
    ran = []

    async def main():
        first = await _occupied(loop, pool, blocker)
        victim = loop.run_in_executor(pool, ran.append, "victim")
        victim.cancel()
        await asyncio.sleep(0)  # let the cancellation reach the pool (stock needs a turn)
        blocker.release.set()
        await loop.run_in_executor(pool, ran.append, "after")
        assert victim.cancelled()
        return await first

    assert run(loop, main()) == "released"
    assert ran == ["after"]


def test_a_job_whose_future_was_settled_before_it_started_still_runs(loop, make_pool):
    # Only a cancellation keeps a queued job from running, not a future settled otherwise
    # (a soft timeout's default). The stock loop then reports an AssertionError from
    # copying the late result over; weaveloop drops that result, as for a cancelled
    # running job.
    pool = make_pool(max_workers=1)
    blocker = Blocker()
    ran = []
    loop.set_exception_handler(lambda lp, context: None)

    async def main():
        first = await _occupied(loop, pool, blocker)
        early = loop.run_in_executor(pool, ran.append, "settled early")
        early.set_result("default")
        blocker.release.set()
        await loop.run_in_executor(pool, ran.append, "after")
        return await first, await early

    assert run(loop, main()) == ("released", "default")
    assert ran == ["settled early", "after"]


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


def _stock_bounds_the_executor_shutdown() -> bool:
    # shutdown_default_executor(timeout) is new in Python 3.12; 3.12.1's waits for the
    # shutdown in full and bounds only the join after it (later versions bound the wait).
    if sys.version_info < (3, 12):
        return False
    source = inspect.getsource(asyncio.base_events.BaseEventLoop.shutdown_default_executor)
    return "timeouts.timeout(timeout)" in source


def test_shutdown_default_executor_timeout(loop, loop_kind):
    if loop_kind == "asyncio" and not _stock_bounds_the_executor_shutdown():
        pytest.skip("this Python's own loop does not bound shutdown_default_executor()")
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


def test_close_leaves_queued_jobs_to_run_but_not_cancelled_ones(loop, make_pool):
    # As with the stock loop: a loop that closes does not take back the jobs it gave a
    # pool (their side effects happen); a job whose future was cancelled does not run.
    pool = make_pool(max_workers=1)
    blocker = Blocker()
    ran = []

    async def main():
        loop.run_in_executor(pool, blocker)
        loop.run_in_executor(pool, ran.append, "kept")
        loop.run_in_executor(pool, ran.append, "cancelled").cancel()
        await asyncio.sleep(0)

    run(loop, main())
    wait_or_fail(blocker.started, "the job to start")
    loop.close()
    blocker.release.set()
    pool.shutdown(wait=True)
    assert ran == ["kept"]


def test_close_retires_the_default_pool_workers(loop):
    barrier = threading.Barrier(3, timeout=SAFETY)

    def job():
        barrier.wait()  # three jobs at once: at least three workers exist
        return threading.current_thread()

    async def main():
        return set(await asyncio.gather(*[loop.run_in_executor(None, job) for _ in range(3)]))

    workers = run(loop, main())
    assert len(workers) == 3
    loop.close()
    for worker in workers:
        join_or_fail(worker)


# -- weaveloop only ------------------------------------------------------------------------


def test_default_executor_is_the_weaveloop_pool(wloop):
    # The stock loop's default pool is concurrent.futures'; weaveloop's is its own.
    run(wloop, wloop.run_in_executor(None, int))
    assert isinstance(wloop._default_executor, weaveloop.ThreadPoolExecutor)
    assert wloop._default_executor._max_workers == stdlib_default_workers()


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
    assert_fork_script_passes(FORK_SCRIPT, loop_kind)


def test_ctrl_c_while_settling_a_job_still_settles_it(wloop):
    # weaveloop's fast path settles the asyncio future on the loop thread; a
    # KeyboardInterrupt arriving in the middle (simulated by a tracer raising it in
    # asyncio's exception conversion) propagates out of the loop, and the future is
    # settled anyway, not left pending.
    fired = []

    def tracer(frame, event, arg):
        if event == "call" and frame.f_code.co_name == "_convert_future_exc" and not fired:
            fired.append(1)
            raise KeyboardInterrupt
        return None

    def boom():
        raise ValueError("job failed")

    futs = []

    async def main():
        sys.settrace(tracer)  # before the job can complete
        try:
            futs.append(wloop.run_in_executor(None, boom))
            await asyncio.wait_for(asyncio.shield(futs[0]), SAFETY)
        finally:
            sys.settrace(None)

    with pytest.raises(KeyboardInterrupt):
        wloop.run_until_complete(main())
    sys.settrace(None)
    assert fired and futs[0].done()
    assert isinstance(futs[0].exception(), ValueError)


def test_run_in_executor_calls_a_subclass_submit_override(loop, pool_cls):
    calls = []

    class Counting(pool_cls):
        def submit(self, fn, /, *args, **kwargs):
            calls.append(fn)
            return super().submit(fn, *args, **kwargs)

    pool = Counting(max_workers=1)
    try:
        assert run(loop, loop.run_in_executor(pool, pow, 2, 10)) == 1024
    finally:
        pool.shutdown()
    assert calls == [pow]


# -- a loop dropped without close() -----------------------------------------------------


@pytest.mark.parametrize("how", ["job in flight", "job cancelled", "completion left by a run"])
def test_a_loop_dropped_with_executor_work_is_collected(loop_factory, how):
    # The job's future refers back to the loop; on the stock loop the completion is a
    # callback in the ready queue, where the GC finds the cycle. weaveloop's completions
    # wait in the lock-free queue, which the GC cannot see: a loop that is not running
    # has them applied by their poster, and one that stops applies what is left, so
    # the loop, its fds and its executor threads go (they stayed for good).
    import gc
    import warnings
    import weakref

    lp = loop_factory()
    gate = threading.Event()
    if how == "completion left by a run":
        started = threading.Event()

        def job():
            started.set()
            gate.wait(SAFETY)

        fut = lp.run_in_executor(None, job)
        stop = lp.stop

        def stop_once_the_job_is_done():
            gate.set()
            stop()

        lp.call_soon(lambda: started.wait(SAFETY))
        lp.call_soon(stop_once_the_job_is_done)
        lp.run_forever()
        del stop
    else:
        fut = lp.run_in_executor(None, gate.wait, SAFETY)
        if how == "job cancelled":
            fut.cancel()
    ref = weakref.ref(lp)
    del lp, fut
    gate.set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)

        def collected():
            gc.collect()
            return ref() is None

        wait_until(collected, "the dropped loop to be collected")


def test_a_due_timeout_beats_an_executor_result_of_the_same_iteration(loop):
    # Both are ready when the loop next looks: the timeout's deadline has passed (the
    # replaced clock says so) and the job's completion is queued. The stock loop runs
    # due timers before what a completion schedules (its completion is a callback that
    # sets the result when it runs), so asyncio.timeout() fires: TimeoutError. weaveloop
    # settled the future as it drained it, and the task resumed with the result first.
    now = [0.0]
    loop.time = lambda: now[0]
    gate = threading.Event()
    pending = (
        (lambda: loop._pending_posts() == 1)
        if hasattr(loop, "_pending_posts")
        else (lambda: len(loop._ready) == 1)
    )

    def hold():
        # The deadline passes and the job completes while this callback holds the loop.
        now[0] = 100.0
        gate.set()
        wait_until(pending, "the job's completion to be queued")

    async def main():
        try:
            async with asyncio.timeout(10):
                fut = loop.run_in_executor(None, gate.wait, SAFETY)
                loop.call_soon(hold)
                await fut
            return "completed"
        except TimeoutError:
            return "TimeoutError"

    assert loop.run_until_complete(main()) == "TimeoutError"


def test_a_loop_started_while_a_worker_settles_for_it_still_wakes_the_waiter(wloop):
    # A job that finishes while its loop is stopped is settled by the worker, on the
    # loop's behalf. Settling runs Python code that may let go of the GIL (here: in debug
    # mode the loop asks the first done callback whether it is a coroutine function,
    # and its __getattr__ waits). If the loop's thread started running meanwhile, the
    # worker's next call_soon (the task's wake-up) was refused by the thread check and
    # the future dropped it: the task never woke. The loop now waits for the worker.
    loop = wloop
    loop.set_debug(True)
    pause, job_go = SettlingPause(), threading.Event()
    in_settle, resume = pause.in_settle, pause.resume

    def job():
        job_go.wait(SAFETY)
        return 42

    async def waiter(fut):
        return await fut

    fut = loop.run_in_executor(None, job)
    fut.add_done_callback(pause)
    task = loop.create_task(waiter(fut))
    run(loop, asyncio.sleep(0))  # the task now awaits fut; the loop stops
    job_go.set()
    wait_or_fail(in_settle, "the worker to settle the future")

    def let_the_worker_go():
        # Once the loop's thread has either started running (before: the race) or is
        # waiting for the worker (now).
        wait_until(
            lambda: loop.is_running() or loop._foreign_drain_waits,
            "the loop's thread to run or to wait for the worker",
        )
        resume.set()

    helper = threading.Thread(target=let_the_worker_go)
    helper.start()
    try:
        # (asyncio.wait, not wait_for: a task that cannot be woken cannot be cancelled.)
        done, _ = run(loop, asyncio.wait([task], timeout=SAFETY))
        assert task in done, "the task awaiting the settled future was never woken"
        assert task.result() == 42
    finally:
        resume.set()
        join_or_fail(helper)
    assert loop._foreign_drain_waits == 1


_FORK_WHILE_A_WORKER_SETTLES = """
import asyncio, faulthandler, os, threading, traceback
import weaveloop
from _support import SettlingPause

loop = weaveloop.new_event_loop()
loop.set_debug(True)
pause, job_go = SettlingPause(), threading.Event()
fut = loop.run_in_executor(None, lambda: job_go.wait(30) and 42)
fut.add_done_callback(pause)
job_go.set()
assert pause.in_settle.wait(30), "the worker never settled the future"
pid = os.fork()
if pid == 0:
    code = 1
    faulthandler.dump_traceback_later(20, exit=True)  # (a hang ends the child)
    try:
        # The settling thread does not exist here: the loop must not wait for it.
        loop.run_until_complete(asyncio.sleep(0))
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)
pause.resume.set()
assert loop.run_until_complete(fut) == 42
_, status = os.waitpid(pid, 0)
loop.close()
print("child exit", os.waitstatus_to_exitcode(status))
"""


def test_a_fork_while_a_worker_settles_for_the_idle_loop():
    assert_fork_script_passes(_FORK_WHILE_A_WORKER_SETTLES, "weaveloop")
