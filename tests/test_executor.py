"""weaveloop.ThreadPoolExecutor's API, differential against concurrent.futures' pool.

Every test runs on weaveloop.ThreadPoolExecutor AND on the stdlib ThreadPoolExecutor (the
oracle). Blocking jobs wait on threading.Events, never on sleeps. run_in_executor and the
loop side live in test_run_in_executor.py.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
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
    assert_fork_script_passes,
    join_or_fail,
    run_python,
    start_thread,
    stdlib_default_workers,
    wait_or_fail,
)

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


@pytest.mark.parametrize("job", [None, 42, "text"])
def test_a_non_callable_job_fails_in_its_future(make_pool, job):
    # submit takes it; calling it fails in the worker, and the future says so. (The
    # weaveloop pool raised from submit itself, past code that reads the future.)
    pool = make_pool(max_workers=1)
    exc = pool.submit(job).exception(SAFETY)
    assert type(exc) is TypeError
    assert str(exc) == f"'{type(job).__name__}' object is not callable"
    assert pool.submit(lambda: "alive").result(SAFETY) == "alive"


def test_submit_from_inside_a_job(make_pool):
    pool = make_pool(max_workers=2)
    inner = pool.submit(lambda: pool.submit(lambda: "inner")).result(SAFETY)
    assert inner.result(SAFETY) == "inner"


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_base_exception_in_a_job_goes_to_its_future(make_pool, exc_type):
    pool = make_pool(max_workers=1)

    def job():
        raise exc_type("in job")

    f = pool.submit(job)
    assert isinstance(f.exception(SAFETY), exc_type)
    # The single worker survived it.
    assert pool.submit(lambda: "alive").result(SAFETY) == "alive"


def test_futures_work_with_wait_and_as_completed(make_pool):
    pool = make_pool(max_workers=4)
    futs = [pool.submit(pow, i, 2) for i in range(50)]
    done, not_done = concurrent.futures.wait(futs, timeout=SAFETY)
    assert not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futs, SAFETY)) == sorted(
        i**2 for i in range(50)
    )


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
    with pytest.raises(RuntimeError, match="^cannot schedule new futures after shutdown$"):
        list(pool.map(int, [1]))
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


def test_a_job_that_shuts_its_own_pool_down_waiting_gets_the_join_error(make_pool):
    pool = make_pool(max_workers=1)
    f = pool.submit(pool.shutdown)
    with pytest.raises(RuntimeError, match="^cannot join current thread$"):
        f.result(SAFETY)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(int)


def test_two_jobs_that_shut_their_pool_down_do_not_wait_on_each_other(make_pool):
    # Each joins the workers before its own, then fails on its own: neither waits for
    # the other forever.
    pool = make_pool(max_workers=2)
    both_running = threading.Barrier(2, timeout=SAFETY)

    def job():
        both_running.wait()
        pool.shutdown(wait=True)

    futures = [pool.submit(job), pool.submit(job)]
    done, not_done = concurrent.futures.wait(futures, timeout=SAFETY)
    assert not not_done, "a job waiting on the other hung"
    for f in futures:
        assert isinstance(f.exception(), RuntimeError)
        assert str(f.exception()) == "cannot join current thread"


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


def test_a_done_callback_raising_during_a_cancelling_shutdown_leaves_no_future_pending(
    make_pool,
):
    # A BaseException out of a queued future's done callback (a Ctrl+C landing there)
    # comes out of shutdown(cancel_futures=True); the futures queued behind it still
    # finish: the stdlib pool leaves them queued and runs them, weaveloop's cancels them.
    pool = make_pool(max_workers=1)
    blocker = Blocker()
    first = pool.submit(blocker)
    wait_or_fail(blocker.started, "the job to start")
    queued = [pool.submit(int, i) for i in range(4)]

    def interrupt(_):
        raise KeyboardInterrupt

    queued[1].add_done_callback(interrupt)
    with pytest.raises(KeyboardInterrupt):
        pool.shutdown(wait=False, cancel_futures=True)
    assert queued[0].cancelled() and queued[1].cancelled()
    blocker.release.set()
    pool.shutdown(wait=True)
    assert first.result(SAFETY) == "released"
    for i, f in enumerate(queued[2:], 2):
        assert f.cancelled() or f.result(0) == i


def test_a_done_callback_may_submit_a_job_and_wait_for_it(make_pool):
    # The worker settling a future runs its done callbacks; it is not idle until they
    # return, so a job a callback submits gets another worker (max_workers allowing).
    pool = make_pool(max_workers=4)
    go = threading.Event()
    called = threading.Event()
    seen = []

    def submit_and_wait(_):
        try:
            seen.append(pool.submit(str, "inner").result(SAFETY))
        except BaseException as e:  # reported by the assertion below
            seen.append(e)
        finally:
            called.set()

    outer = pool.submit(go.wait, SAFETY)
    outer.add_done_callback(submit_and_wait)
    go.set()
    wait_or_fail(called, "the done callback to return")
    assert seen == ["inner"]
    assert outer.result(0) is True


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


def test_a_failed_worker_start_leaves_its_number_to_the_next(pool_cls, monkeypatch):
    real_start = threading.Thread.start
    failed = []

    def flaky_start(self):
        if not failed:
            failed.append(self.name)
            raise RuntimeError("can't start new thread")
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", flaky_start)
    with pool_cls(max_workers=2, thread_name_prefix="w") as pool:
        with pytest.raises(RuntimeError, match="can't start new thread"):
            pool.submit(int)
        name = pool.submit(lambda: threading.current_thread().name).result(SAFETY)
    assert failed == ["w_0"] and name == "w_0"


def test_default_max_workers_is_the_stdlib_default(make_pool):
    assert make_pool()._max_workers == stdlib_default_workers()
    assert make_pool(max_workers=3)._max_workers == 3


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_default_max_workers_follows_the_stdlib_on_fewer_cpus():
    # On one CPU of this machine's: the stdlib pool's size is what this Python's
    # concurrent.futures makes of it (3.13: the CPUs the process may use).
    script = textwrap.dedent(
        """
        import concurrent.futures, os
        import weaveloop
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        print(concurrent.futures.ThreadPoolExecutor()._max_workers,
              weaveloop.ThreadPoolExecutor()._max_workers)
        """
    )
    out = run_python(script)
    assert out.returncode == 0, out.stderr
    stdlib, ours = out.stdout.split()
    assert ours == stdlib


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
    # Logged as the stdlib logs it, with the initializer's traceback.
    (record,) = [r for r in caplog.records if r.getMessage() == "Exception in initializer:"]
    assert record.exc_info[1].args == ("init failed",)
    assert traceback.extract_tb(record.exc_info[2])[-1].name == "init"


def test_a_base_exception_from_a_done_callback_is_logged_as_the_stdlib_worker_logs_it(
    make_pool, pool_cls
):
    # Done callbacks added before the job ends run in the worker; a BaseException from
    # one leaves the future's set_result. The stdlib worker logs it as critical and its
    # thread dies; weaveloop's logs it the same way and goes on.
    logged = []
    seen = threading.Event()

    class Recorder(logging.Handler):
        def emit(self, record):
            logged.append(record)
            seen.set()

    recorder = Recorder()
    logger = logging.getLogger("concurrent.futures")
    logger.addHandler(recorder)
    try:
        pool = make_pool(max_workers=1)
        go = threading.Event()
        f = pool.submit(go.wait, SAFETY)
        f.add_done_callback(lambda _: sys.exit(3))
        go.set()
        assert f.result(SAFETY) is True
        wait_or_fail(seen, "the worker's report")
    finally:
        logger.removeHandler(recorder)
    (record,) = logged
    assert record.levelno == logging.CRITICAL
    assert record.getMessage() == "Exception in worker"
    assert type(record.exc_info[1]) is SystemExit
    if pool_cls is weaveloop.ThreadPoolExecutor:
        assert pool.submit(int, 7).result(SAFETY) == 7


def test_a_job_exception_keeps_its_traceback(make_pool):
    def job():
        raise KeyError("from job")

    exc = make_pool(max_workers=1).submit(job).exception(SAFETY)
    assert isinstance(exc, KeyError)
    assert traceback.extract_tb(exc.__traceback__)[-1].name == "job"


def _pool_imports(pool_cls) -> str:
    """The lines that make `pool_cls` importable as `Pool` in a program of its own."""
    module = pool_cls.__module__.split(".")[0]
    return f"import {module}\nfrom {pool_cls.__module__} import {pool_cls.__name__} as Pool\n"


def _run_pool_program(pool_cls, program: str):
    """Runs `program` in a fresh interpreter, with `pool_cls` imported as `Pool` first.
    Its completed process."""
    return run_python(_pool_imports(pool_cls) + textwrap.dedent(program), timeout=60)


def test_workers_are_joined_at_interpreter_exit(pool_cls):
    # A job still running when the main thread ends must finish before the process exits.
    out = _run_pool_program(
        pool_cls,
        """
        import threading, time
        pool = Pool(max_workers=1)
        started = threading.Event()
        def job():
            started.set()
            time.sleep(0.2)  # gives an unjoined worker time to be killed: not a sync point
            print("job finished", flush=True)
        pool.submit(job)
        started.wait()
        print("main exiting", flush=True)
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["main", "exiting", "job", "finished"]


def test_shutdown_waits_for_a_job_accepted_while_its_worker_was_starting(make_pool):
    # A submit on another thread reserves a worker and starts its thread (which
    # releases the GIL); a shutdown(wait=True) racing it must still join that worker.
    import random
    import time

    rng = random.Random(3)
    for _ in range(50):
        pool = make_pool(max_workers=2)
        futs = []
        both = threading.Barrier(2)

        def submitter(pool=pool, futs=futs, both=both):
            both.wait(SAFETY)
            try:
                futs.append(pool.submit(time.sleep, 0.002))
            except RuntimeError:  # lost the race to shutdown: refused, fine
                pass

        t = start_thread(submitter)
        both.wait(SAFETY)
        for _ in range(rng.randrange(200)):  # jitter only: vary where shutdown lands
            pass
        pool.shutdown(wait=True)
        join_or_fail(t)
        assert all(f.done() for f in futs)


def test_a_cancelled_queued_job_does_not_keep_the_others_from_breaking():
    # weaveloop only (the stdlib pool leaves the later futures pending here): when the
    # initializer fails, every queued job's future gets BrokenThreadPool, even if one
    # of them was cancelled by its caller meanwhile.
    go = threading.Event()

    def init():
        wait_or_fail(go, "the jobs to queue")
        raise ValueError("init failed")

    pool = weaveloop.ThreadPoolExecutor(max_workers=1, initializer=init)
    a = pool.submit(int)
    b = pool.submit(int)
    assert a.cancel()
    go.set()
    with pytest.raises(weaveloop.BrokenThreadPool):
        b.result(timeout=SAFETY)
    pool.shutdown()


def _worker_threads(pool) -> list[threading.Thread]:
    if isinstance(pool, weaveloop.ThreadPoolExecutor):
        return pool._started_threads()
    return list(pool._threads)


def test_a_pool_dropped_without_shutdown_lets_its_workers_exit(pool_cls):
    import gc

    pool = pool_cls(max_workers=2)
    assert pool.submit(pow, 2, 10).result(SAFETY) == 1024
    workers = _worker_threads(pool)
    assert workers
    del pool
    gc.collect()
    for t in workers:
        join_or_fail(t)


def test_a_subclass_may_pass_its_own_constructor_arguments(pool_cls):
    class Named(pool_cls):
        def __init__(self, name, workers=1):
            super().__init__(max_workers=workers, thread_name_prefix=name)

    pool = Named("db")
    try:
        assert pool._max_workers == 1
        assert pool.submit(lambda: threading.current_thread().name).result(SAFETY) == "db_0"
    finally:
        pool.shutdown()


def test_thread_name_prefix_none_means_the_default(make_pool):
    pool = make_pool(max_workers=1, thread_name_prefix=None)
    name = pool.submit(lambda: threading.current_thread().name).result(SAFETY)
    assert re.fullmatch(r"ThreadPoolExecutor-\d+_0", name)


def test_a_pool_shut_down_before_fork_stays_shut_down_in_the_child(pool_cls):
    pool = pool_cls(max_workers=1)
    pool.shutdown()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            pool.submit(int)
        except RuntimeError as e:
            code = 0 if "after shutdown" in str(e) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


FORKED_WHILE_ANOTHER_THREAD_HOLDS_THE_WORKER_LIST = textwrap.dedent(
    """
    import os, signal
    import weaveloop
    from _support import reap_child
    pool = weaveloop.ThreadPoolExecutor(2)
    pool.submit(int).result()
    # Held by another thread, as a shutdown (or `_threads`) holds it while it looks.
    pool._hold_worker_list()
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # safety net
        os._exit(0 if pool.submit(pow, 2, 3).result(5) == 8 and pool._threads else 1)
    print(reap_child(pid))
    pool._release_worker_list()
    """
)


def test_a_fork_while_another_thread_holds_the_worker_list_leaves_the_child_a_pool():
    # The child's reset took the lock of the parent's list of workers, which
    # `_started_threads` holds without the GIL: a fork inside that window hung the
    # child inside os.fork() (about 1% of forks under churn). It now starts a new list.
    assert_fork_script_passes(FORKED_WHILE_ANOTHER_THREAD_HOLDS_THE_WORKER_LIST, "weaveloop")


def _run_after_the_pools_exit_hook(pool_cls, setup: str, late: str):
    """Runs a program that makes `Pool` (`pool_cls`) and runs `setup`, then ends its
    main thread, leaving a non-daemon thread that runs `late` once the pools' exit hook
    (the stdlib's `_python_exit` or weaveloop's) has run. Its completed process."""
    preamble = textwrap.dedent(
        """
        import threading
        # Registered before the pool modules register theirs, so it runs after them.
        pools_closed = threading.Event()
        threading._register_atexit(pools_closed.set)
        """
    ) + _pool_imports(pool_cls)
    body = textwrap.indent(textwrap.dedent(late), "    ")
    code = (
        f"{preamble}{textwrap.dedent(setup)}\n"
        f"def late():\n    pools_closed.wait()\n{body}\n"
        "threading.Thread(target=late).start()\n"
    )
    return run_python(code, timeout=60)


def test_no_new_jobs_after_interpreter_shutdown_began(pool_cls):
    # A non-daemon thread that outlives the main thread finds the pools closed to new
    # work (the stdlib's rule), on the submit path and on run_in_executor's fast path.
    late = """
        pool = Pool(max_workers=1)
        try:
            pool.submit(int)
        except RuntimeError as e:
            print("submit:", e, flush=True)
        loop = weaveloop.new_event_loop()
        try:
            loop.run_until_complete(loop.run_in_executor(pool, int))
        except RuntimeError as e:
            print("run_in_executor:", e, flush=True)
        loop.close()
    """
    out = _run_after_the_pools_exit_hook(pool_cls, "import weaveloop", late)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "submit: cannot schedule new futures after interpreter shutdown",
        "run_in_executor: cannot schedule new futures after interpreter shutdown",
    ]


def test_after_exit_a_pool_that_had_workers_reads_shut_down(pool_cls):
    # At exit the stdlib's workers mark their pool shut down as they stop: a later
    # submit there hears "after shutdown", and on a pool that never started a worker
    # "after interpreter shutdown".
    setup = """
        worked, idle = Pool(max_workers=1), Pool(max_workers=1)
        worked.submit(int).result()
    """
    late = """
        for name, pool in (("worked", worked), ("idle", idle)):
            try:
                pool.submit(int)
            except RuntimeError as e:
                print(name, pool._shutdown, e, flush=True)
    """
    out = _run_after_the_pools_exit_hook(pool_cls, setup, late)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "worked True cannot schedule new futures after shutdown",
        "idle False cannot schedule new futures after interpreter shutdown",
    ]


def test_a_job_running_at_exit_hears_interpreter_shutdown_from_its_own_pool(pool_cls):
    # The stdlib pool is marked shut down only once its workers stop: a job still
    # running at exit, submitting to its own pool, hears "after interpreter shutdown".
    # (weaveloop's exit hook marked its pools at once: "after shutdown".)
    out = _run_pool_program(
        pool_cls,
        """
        import sys, threading
        started = threading.Event()
        main = threading.main_thread().ident
        def main_thread_joins_at_exit():
            names, frame = set(), sys._current_frames().get(main)
            while frame is not None:
                names.add(frame.f_code.co_name)
                frame = frame.f_back
            return {"_python_exit", "join"} <= names
        def job():
            started.set()
            # Until the pools' exit hook waits to join this very worker.
            while not main_thread_joins_at_exit():
                pass
            try:
                pool.submit(int)
            except RuntimeError as e:
                print("job:", e, flush=True)
        pool = Pool(max_workers=1)
        pool.submit(job)
        started.wait()
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "job: cannot schedule new futures after interpreter shutdown"
    ]


def test_at_exit_a_pool_reads_shut_down_once_one_of_its_workers_stopped(pool_cls):
    # A stdlib worker marks its pool shut down as it meets the exit's sentinel. A job
    # still running then hears "after shutdown" from a pool one of whose workers has
    # stopped (its own pool's idle one, another pool's), and "after interpreter
    # shutdown" from a pool that never had one. (weaveloop marked pools only once every
    # worker of every pool had been joined.)
    out = _run_pool_program(
        pool_cls,
        """
        import threading
        started, ready = threading.Event(), threading.Event()
        def job():
            started.set()
            ready.wait()
            me = threading.current_thread()
            others = [t for t in [*own._threads, *idle._threads] if t is not me]
            # Until the exit hook has stopped the other workers (only exit stops them).
            while any(t.is_alive() for t in others):
                pass
            for name, pool in (("own", own), ("idle", idle), ("unused", unused)):
                try:
                    pool.submit(int)
                except RuntimeError as e:
                    print(name, e, flush=True)
        own, idle, unused = Pool(max_workers=2), Pool(max_workers=1), Pool(max_workers=1)
        idle.submit(int).result()
        own.submit(job)
        started.wait()
        own.submit(int).result()  # a second worker of its own, idle from now on
        ready.set()
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "own cannot schedule new futures after shutdown",
        "idle cannot schedule new futures after shutdown",
        "unused cannot schedule new futures after interpreter shutdown",
    ]


def test_ctrl_c_inside_a_worker_start_does_not_hang_the_exit(pool_cls):
    # KeyboardInterrupt raised in Thread.start() after the thread began: the submit
    # fails, the worker runs anyway, and the process must still exit.
    out = _run_pool_program(
        pool_cls,
        """
        import threading
        start = threading.Thread.start
        def interrupted_start(self):
            threading.Thread.start = start
            start(self)
            raise KeyboardInterrupt
        threading.Thread.start = interrupted_start
        pool = Pool(max_workers=2)
        try:
            pool.submit(int)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        print(pool.submit(pow, 2, 2).result(timeout=30), flush=True)
        pool.shutdown(wait=True)
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["interrupted", "4"]


def test_default_thread_names_share_the_stdlib_pool_numbering():
    # Pools of both kinds draw from one sequence: no two name their threads alike.
    names = []
    for cls in (weaveloop.ThreadPoolExecutor, concurrent.futures.ThreadPoolExecutor) * 2:
        pool = cls(max_workers=1)
        try:
            names.append(pool.submit(lambda: threading.current_thread().name).result(SAFETY))
        finally:
            pool.shutdown()
    assert len(set(names)) == len(names), names


def test_sequential_submits_are_served_by_one_worker(pool_cls):
    # Each job's result wakes the submitter, which submits the next: the worker that ran
    # it must already count as idle by then (the stdlib's releases its idle semaphore
    # before letting go of the GIL), or every submit could start another worker (weaveloop
    # grew such pools towards max_workers, each running the initializer).
    # (Ten pools: the race this guards against took ~3 pools in 10 to show.)
    for _ in range(10):
        started = []
        with pool_cls(max_workers=8, initializer=started.append, initargs=(None,)) as pool:
            for i in range(500):
                assert pool.submit(int, i).result(timeout=SAFETY) == i
        assert started == [None]


def test_the_stdlib_pools_attributes_that_code_reads(pool_cls):
    # `if pool._shutdown:` guards many a submit; `_shutdown` was a method (always true).
    pool = pool_cls(max_workers=2)
    assert isinstance(pool, concurrent.futures.ThreadPoolExecutor)
    assert pool._shutdown is False and pool._broken is False
    assert pool.submit(int, 1).result(timeout=SAFETY) == 1
    assert {t.name for t in pool._threads} == {f"{pool._thread_name_prefix}_0"}
    pool.shutdown()
    assert pool._shutdown is True


def test_the_stock_loop_takes_it_as_its_default_executor():
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        loop.set_default_executor(weaveloop.ThreadPoolExecutor(max_workers=2))
        assert loop.run_until_complete(loop.run_in_executor(None, int, 5)) == 5
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


@pytest.mark.parametrize("max_workers", [2.5, 4 / 2])
def test_a_float_max_workers_as_the_stdlib_reads_it(pool_cls, max_workers):
    # The stdlib starts a thread while fewer than max_workers run: 2.5 allows 3.
    gate = threading.Event()
    with pool_cls(max_workers=max_workers, thread_name_prefix=7) as pool:
        futures = [pool.submit(gate.wait, SAFETY) for _ in range(4)]
        names = {t.name for t in pool._threads}
        gate.set()
        assert all(f.result(timeout=SAFETY) for f in futures)
    assert names == {f"7_{i}" for i in range(math.ceil(max_workers))}


_DAEMON_CREATED_POOL_AT_EXIT = """
import gc, sys, threading, time
import weaveloop

started = threading.Event()
release = threading.Event()

def job():
    started.set()
    release.wait(30)
    # Work that outlasts the exit (slow on purpose: nothing but the join waits for it).
    time.sleep(0.2)
    print("JOB DONE", flush=True)

def daemon():
    weaveloop.ThreadPoolExecutor(1).submit(job)  # the pool is dropped at once

creator = threading.Thread(target=daemon, daemon=True)
creator.start()
creator.join(30)
started.wait(30)
gc.collect()
# Released only once the interpreter is exiting: the job must still be joined.
threading._register_atexit(release.set)
"""


def test_a_dropped_pool_of_a_daemon_thread_is_joined_at_exit():
    # Its workers inherit the daemon flag, so threading's shutdown does not join them,
    # and the pool is gone: the stdlib joins every worker it started, so does weaveloop
    # (the job was killed at exit before).
    out = run_python(_DAEMON_CREATED_POOL_AT_EXIT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "JOB DONE", out.stderr
