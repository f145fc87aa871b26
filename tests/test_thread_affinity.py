"""Thread affinity (DESIGN.md rule 5): strict by default, opt-out, loops in worker threads.

The strict checks are weaveloop's own (the stock loop checks only in debug mode, and not
every method), so those tests use weaveloop only; loops in worker threads are differential.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading

import pytest
import weaveloop
from _support import SAFETY, LoopThread, join_or_fail, start_thread, wait_or_fail

MESSAGE = "Non-thread-safe operation invoked on an event loop other than the current one"


async def _noop():
    pass


def _calls(loop, sock, coro=None):
    """The non-thread-safe methods, each as a zero-argument call."""
    return {
        "call_soon": lambda: loop.call_soon(lambda: None),
        "call_later": lambda: loop.call_later(3600, lambda: None),
        "call_at": lambda: loop.call_at(loop.time() + 3600, lambda: None),
        "create_task": lambda: loop.create_task(_noop() if coro is None else coro),
        "create_future": lambda: loop.create_future(),
        "run_in_executor": lambda: loop.run_in_executor(None, int),
        "add_reader": lambda: loop.add_reader(sock, lambda: None),
        "remove_reader": lambda: loop.remove_reader(sock),
        "add_writer": lambda: loop.add_writer(sock, lambda: None),
        "remove_writer": lambda: loop.remove_writer(sock),
    }


METHODS = [
    "call_soon",
    "call_later",
    "call_at",
    "create_task",
    "create_future",
    "run_in_executor",
    "add_reader",
    "remove_reader",
    "add_writer",
    "remove_writer",
]


@pytest.fixture
def sock():
    a, b = socket.socketpair()
    yield a
    a.close()
    b.close()


def _call_from_foreign_thread(call):
    """Run ``call`` in a fresh thread; return ('ok', result) or ('error', exception)."""
    out = []

    def target():
        try:
            out.append(("ok", call()))
        except BaseException as e:  # noqa: BLE001 - reported to the test
            out.append(("error", e))

    join_or_fail(start_thread(target))
    return out[0]


def _let_the_loop_settle(lp, method, sock):
    """After a call made from a foreign thread: waits until the loop has run an iteration
    past it, then removes the fd watcher it may have added."""
    done = threading.Event()
    lp.call_soon_threadsafe(done.set)
    wait_or_fail(done, "the loop to process the call")
    if method in ("add_reader", "add_writer"):
        lp.call_soon_threadsafe(lp.remove_reader, sock)
        lp.call_soon_threadsafe(lp.remove_writer, sock)


@pytest.mark.parametrize("method", METHODS)
def test_strict_loop_refuses_foreign_threads(method, sock):
    lp = weaveloop.new_event_loop()
    lt = LoopThread(lp).start()
    coro = _noop()
    try:
        kind, value = _call_from_foreign_thread(_calls(lp, sock, coro)[method])
    finally:
        coro.close()
        lt.stop()
        lp.close()
    assert kind == "error", f"{method} from a foreign thread returned {value!r}"
    assert type(value) is RuntimeError
    assert str(value) == MESSAGE


def test_strict_check_also_applies_when_the_caller_runs_its_own_loop():
    # Even a thread with its own running loop may not touch another thread's loop.
    target = weaveloop.new_event_loop()
    lt = LoopThread(target).start()
    own = weaveloop.new_event_loop()
    try:

        async def main():
            with pytest.raises(RuntimeError, match=MESSAGE):
                target.call_soon(lambda: None)

        own.run_until_complete(asyncio.wait_for(main(), SAFETY))
    finally:
        own.close()
        lt.stop()
        target.close()


@pytest.mark.parametrize("method", METHODS)
def test_not_running_loop_accepts_calls_from_any_thread(method, sock):
    # Set-up before run_forever may happen in any thread (then the loop moves to its thread).
    lp = weaveloop.new_event_loop()
    try:
        kind, value = _call_from_foreign_thread(_calls(lp, sock)[method])
        assert kind == "ok", f"{method} on a stopped loop raised {value!r}"
        if method == "create_task":
            lp.run_until_complete(value)
        elif method == "run_in_executor":
            lp.run_until_complete(value)
    finally:
        lp.remove_reader(sock)
        lp.remove_writer(sock)
        lp.close()


@pytest.mark.parametrize("method", METHODS)
def test_strict_threads_false_allows_foreign_threads(method, sock):
    lp = weaveloop.new_event_loop(strict_threads=False)
    lt = LoopThread(lp).start()
    try:
        kind, value = _call_from_foreign_thread(_calls(lp, sock)[method])
        assert kind == "ok", f"{method} raised {value!r} with strict_threads=False"
        _let_the_loop_settle(lp, method, sock)
    finally:
        lt.stop()
        lp.close()


# What the stock loop's debug mode checks (through call_soon/call_at); the other methods
# it never checks, so only strict mode refuses them.
DEBUG_CHECKED = {"call_soon", "call_later", "call_at", "create_task"}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("flavour", ["stock", "weaveloop"])
def test_debug_mode_without_strict_checks_what_asyncio_checks(method, flavour, sock):
    if flavour == "stock":
        lp = asyncio.new_event_loop()
    else:
        lp = weaveloop.new_event_loop(strict_threads=False)
    lp.set_debug(True)

    def handler(loop, context):
        # The stock loop's refused create_task leaves the Task it made pending for good.
        if context["message"] != "Task was destroyed but it is pending!":
            loop.default_exception_handler(context)

    lp.set_exception_handler(handler)
    lt = LoopThread(lp).start()
    coro = _noop()
    try:
        kind, value = _call_from_foreign_thread(_calls(lp, sock, coro)[method])
        _let_the_loop_settle(lp, method, sock)
        if method == "run_in_executor" and kind == "ok":
            asyncio.run_coroutine_threadsafe(asyncio.wait([value]), lp).result(SAFETY)
    finally:
        coro.close()
        lt.stop()
        lp.close()
    if method in DEBUG_CHECKED:
        assert kind == "error", f"{method} from a foreign thread returned {value!r}"
        assert type(value) is RuntimeError
        assert str(value) == MESSAGE
    else:
        assert kind == "ok", f"{method} raised {value!r} in debug mode without strict"


def test_thread_safe_methods_work_from_foreign_threads():
    lp = weaveloop.new_event_loop()
    lt = LoopThread(lp).start()
    try:

        def probe():
            results = [lp.time() > 0, lp.is_running(), lp.is_closed(), lp.get_debug()]
            fut = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "rc"), lp)
            results.append(fut.result(SAFETY))
            done = threading.Event()
            lp.call_soon_threadsafe(done.set)
            results.append(done.wait(SAFETY))
            return results

        kind, value = _call_from_foreign_thread(probe)
        assert kind == "ok", value
        assert value == [True, True, False, False, "rc", True]
    finally:
        lt.stop()
        lp.close()


def test_loop_thread_itself_is_never_refused(wloop):
    async def main():
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: None)
        loop.call_later(0, lambda: None)
        await loop.create_task(_noop())
        return await loop.run_in_executor(None, int)

    assert wloop.run_until_complete(asyncio.wait_for(main(), SAFETY)) == 0


def test_loop_can_move_to_another_thread_between_runs():
    lp = weaveloop.new_event_loop()
    try:
        assert lp.run_until_complete(asyncio.sleep(0, "main")) == "main"
        out = []
        join_or_fail(start_thread(lambda: out.append(lp.run_until_complete(_in_loop()))))
        assert out == ["worker ok"]
        # ... and back.
        assert lp.run_until_complete(_in_loop()) == "worker ok"
    finally:
        lp.close()


async def _in_loop():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "worker ok")
    return await fut


# -- loops in worker threads (differential) -------------------------------------------------


def test_loop_in_worker_thread_runs_and_stops(loop_factory):
    created = []
    ready = threading.Event()
    results = []

    def worker():
        lp = loop_factory()
        created.append(lp)
        lp.call_soon(ready.set)
        try:
            lp.run_forever()
            results.append("stopped")
        finally:
            lp.close()

    t = start_thread(worker)
    wait_or_fail(ready, "the worker loop to run")
    lp = created[0]
    fut = asyncio.run_coroutine_threadsafe(asyncio.sleep(0, "from main"), lp)
    assert fut.result(SAFETY) == "from main"
    lp.call_soon_threadsafe(lp.stop)
    join_or_fail(t)
    assert results == ["stopped"]
    assert lp.is_closed()


def test_each_thread_runs_its_own_loop(loop_factory):
    n = 4
    barrier = threading.Barrier(n, timeout=SAFETY)
    results = [None] * n

    def worker(k):
        lp = loop_factory()
        try:

            async def main():
                barrier.wait()  # every loop is running at the same time here
                await asyncio.sleep(0)
                return k, asyncio.get_running_loop() is lp

            results[k] = lp.run_until_complete(main())
        finally:
            lp.close()

    threads = [start_thread(worker, k) for k in range(n)]
    for t in threads:
        join_or_fail(t)
    assert results == [(k, True) for k in range(n)]


def test_worker_thread_loop_with_fd_watchers(loop_factory):
    r, w = os.pipe()
    try:
        got = []

        def worker():
            lp = loop_factory()
            try:

                def on_readable():
                    got.append(os.read(r, 10))
                    lp.remove_reader(r)
                    lp.stop()

                lp.add_reader(r, on_readable)
                lp.call_soon(os.write, w, b"fd")
                lp.call_later(SAFETY, lp.stop)
                lp.run_forever()
            finally:
                lp.close()

        join_or_fail(start_thread(worker))
        assert got == [b"fd"]
    finally:
        os.close(r)
        os.close(w)
