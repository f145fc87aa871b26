"""A pool's `submit` wrapped or patched: tracing agents (OpenTelemetry's
ThreadingInstrumentor, ddtrace's futures integration) wrap the stdlib pool's `submit` to
carry the caller's context into each job, and tests patch `submit` to see what is
offloaded. Every job then goes through the wrapper, on either loop and either pool, as
it does with the stock loop and the stdlib pool.

Differential (loops x pools) unless a test says why it is weaveloop only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import threading
from unittest import mock

import pytest
import weaveloop
from _support import SAFETY, Blocker, run

request = contextvars.ContextVar("request", default=None)

STDLIB_POOL = concurrent.futures.ThreadPoolExecutor


@pytest.fixture
def traced_submit(monkeypatch):
    """The stdlib pool's submit wrapped as a tracing agent wraps it: the job runs with
    the submitter's `request`. Returns the callables it was given."""
    seen = []
    original = STDLIB_POOL.submit

    @functools.wraps(original)
    def submit(self, fn, /, *args, **kwargs):
        seen.append(fn)
        value = request.get()

        def job(*a, **k):
            request.set(value)
            return fn(*a, **k)

        return original(self, job, *args, **kwargs)

    monkeypatch.setattr(STDLIB_POOL, "submit", submit)
    return seen


def passthrough(f):
    """A wrapper of `f` that only calls it."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return f(*args, **kwargs)

    return wrapper


def in_own_context(fn, *args):
    return contextvars.copy_context().run(fn, *args)


def test_a_wrapper_of_the_stdlib_submit_gets_every_job(loop, make_pool, traced_submit):
    pool = make_pool(max_workers=2)

    async def main():
        request.set("r1")
        return [
            await loop.run_in_executor(None, request.get),
            await loop.run_in_executor(pool, request.get),
            await asyncio.to_thread(request.get),
        ]

    assert in_own_context(run, loop, main()) == ["r1", "r1", "r1"]
    assert len(traced_submit) == 3

    def direct():
        request.set("r2")
        return pool.submit(request.get).result(SAFETY)

    assert in_own_context(direct) == "r2"
    assert len(traced_submit) == 4


def test_jobs_a_wrapped_submit_queued_are_cancelled_by_shutdown(pool_cls, traced_submit):
    pool = pool_cls(max_workers=1)
    blocker = Blocker()
    first = pool.submit(blocker)
    assert blocker.started.wait(SAFETY)
    queued = pool.submit(int, "1")
    assert len(traced_submit) == 2
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    blocker.release.set()
    assert first.result(SAFETY) == "released"
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        pool.submit(int)


def test_a_broken_pool_fails_the_jobs_a_wrapped_submit_queued(pool_cls, traced_submit):
    queued = threading.Event()

    def init():
        queued.wait(SAFETY)  # (until every job is queued: a broken pool takes none)
        raise ValueError("init failed")

    pool = pool_cls(max_workers=1, initializer=init)
    try:
        futures = [pool.submit(int, str(i)) for i in range(3)]
        queued.set()
        for f in futures:
            with pytest.raises(weaveloop.BrokenThreadPool):
                f.result(SAFETY)
        assert len(traced_submit) == 3
        with pytest.raises(weaveloop.BrokenThreadPool):
            pool.submit(int)
        # (The stdlib pool keeps _shutdown False when broken; so does weaveloop's now.)
        assert pool._shutdown is False and pool._broken
    finally:
        pool.shutdown()


def test_a_job_queued_through_a_wrapped_submit_runs_once_and_settles(make_pool, traced_submit):
    pool = make_pool(max_workers=2)
    ran = []
    futures = [pool.submit(ran.append, i) for i in range(50)]
    assert [f.result(SAFETY) for f in futures] == [None] * 50
    assert sorted(ran) == list(range(50))
    assert len(traced_submit) == 50
    failing = pool.submit(int, "x")
    with pytest.raises(ValueError):
        failing.result(SAFETY)


def test_run_in_executor_calls_a_patched_submit(loop, pool_cls, make_pool, monkeypatch):
    pool = make_pool(max_workers=1)
    with mock.patch.object(pool, "submit", wraps=pool.submit) as on_instance:
        assert run(loop, loop.run_in_executor(pool, pow, 2, 3)) == 8
    assert on_instance.call_count == 1

    calls = []
    original = pool_cls.submit

    def counting(self, fn, /, *args, **kwargs):
        calls.append(fn)
        return original(self, fn, *args, **kwargs)

    monkeypatch.setattr(pool_cls, "submit", counting)
    assert run(loop, loop.run_in_executor(pool, pow, 2, 4)) == 16
    assert calls == [pow]


def test_a_coroutine_function_is_refused_before_the_wrapper_sees_it(traced_submit):
    # weaveloop only: its pool refuses coroutine functions (the stdlib's returns a future
    # whose result is a coroutine object).
    async def job():
        pass

    with weaveloop.ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(TypeError):
            pool.submit(job)
    assert traced_submit == []


def test_run_in_executor_bypasses_submit_only_while_nothing_patches_it(wloop, monkeypatch):
    # weaveloop only: its fast path skips submit; it must be taken only when that skips
    # nothing. The generic path is the one that calls _run_in_foreign_executor.
    generic = []
    original = type(wloop)._run_in_foreign_executor

    def counting(self, executor, func, args):
        generic.append(func)
        return original(self, executor, func, args)

    monkeypatch.setattr(type(wloop), "_run_in_foreign_executor", counting)
    pool = weaveloop.ThreadPoolExecutor(max_workers=1)

    def offload(arg):
        return run(wloop, wloop.run_in_executor(pool, int, arg))

    try:
        assert offload("1") == 1 and generic == []
        with monkeypatch.context() as m:
            m.setattr(STDLIB_POOL, "submit", passthrough(STDLIB_POOL.submit))
            assert offload("2") == 2 and generic == [int]
        assert offload("3") == 3 and generic == [int]
        with mock.patch.object(pool, "submit", wraps=pool.submit):
            assert offload("4") == 4 and generic == [int, int]
        with monkeypatch.context() as m:
            own = weaveloop.ThreadPoolExecutor.submit
            m.setattr(weaveloop.ThreadPoolExecutor, "submit", passthrough(own))
            assert offload("5") == 5 and generic == [int, int, int]
        assert offload("6") == 6 and generic == [int, int, int]
    finally:
        pool.shutdown()
