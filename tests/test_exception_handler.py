"""Exception handling: set/get/default/call_exception_handler, callback failures, BaseException.

Differential: every test runs on weaveloop and on the stock loop. Exceptions from callbacks
reach the handler with asyncio's context keys and the loop keeps running;
KeyboardInterrupt/SystemExit propagate out of run_forever and the loop stays usable.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import socket
import sys
import traceback

import pytest
from _support import join_or_fail, run, start_thread


def failing_callback():
    raise ZeroDivisionError("from callback")


def _collecting_handler(contexts):
    def handler(lp, context):
        contexts.append((lp, context))

    return handler


def test_default_handler_is_none_and_set_get_roundtrip(loop):
    assert loop.get_exception_handler() is None

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None


def test_set_exception_handler_rejects_non_callables(loop):
    with pytest.raises(TypeError):
        loop.set_exception_handler("not callable")


def test_callback_exception_goes_to_handler_and_loop_keeps_running(loop):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))
    ran = []
    h = loop.call_soon(failing_callback)
    loop.call_soon(ran.append, "same batch")
    loop.call_soon(lambda: loop.call_soon(loop.stop))
    loop.run_forever()
    assert ran == ["same batch"]
    assert len(contexts) == 1
    lp, ctx = contexts[0]
    assert lp is loop
    assert ctx["message"].startswith("Exception in callback")
    assert "failing_callback" in ctx["message"]
    assert isinstance(ctx["exception"], ZeroDivisionError)
    # The exception carries its traceback, down to the frame that raised it.
    frames = traceback.extract_tb(ctx["exception"].__traceback__)
    assert frames and frames[-1].name == "failing_callback"
    assert ctx["handle"] is h


def test_timer_exception_goes_to_handler(loop):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))
    t = loop.call_later(0.001, failing_callback)
    loop.call_later(0.005, loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    ctx = contexts[0][1]
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["handle"] is t


def test_many_failing_callbacks_are_all_reported(loop):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))
    for _ in range(100):
        loop.call_soon(failing_callback)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 100


def test_default_handler_logs_message_and_traceback(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(failing_callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    rec = records[0]
    assert rec.levelno == logging.ERROR
    lines = rec.getMessage().splitlines()
    assert lines[0].startswith("Exception in callback failing_callback()")
    handle_lines = [line for line in lines if line.startswith("handle: ")]
    assert len(handle_lines) == 1 and "failing_callback" in handle_lines[0]
    assert rec.exc_info and rec.exc_info[0] is ZeroDivisionError


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("args", [(), (1,), (1, "a"), (1, "a", None)])
def test_the_message_names_the_callbacks_arguments(loop, args, debug):
    # (Python 3.13 shows a callback's arguments in debug mode only: they may be secret.)
    loop.set_debug(debug)
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))

    def failing_with(*args):
        raise ZeroDivisionError

    loop.call_soon(failing_with, *args)
    loop.call_soon(loop.stop)
    loop.run_forever()
    [(_, ctx)] = contexts
    shown = ", ".join(map(repr, args)) if debug or sys.version_info < (3, 13) else ""
    assert ctx["message"].startswith(f"Exception in callback {failing_with.__qualname__}({shown})")


def test_call_exception_handler_uses_custom_handler(loop):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))
    ctx = {"message": "custom", "exception": ValueError("x"), "future": None}
    loop.call_exception_handler(ctx)
    assert contexts == [(loop, ctx)]


def test_call_exception_handler_default_log_format(loop, caplog):
    fut = loop.create_future()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "Something odd", "future": fut, "extra": 7})
    (rec,) = [r for r in caplog.records if r.name == "asyncio"]
    lines = rec.getMessage().splitlines()
    assert lines[0] == "Something odd"
    assert "extra: 7" in lines
    assert f"future: {fut!r}" in lines
    assert not rec.exc_info
    fut.cancel()


def test_default_exception_handler_callable_directly(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.default_exception_handler({"message": "direct", "exception": KeyError("k")})
    (rec,) = [r for r in caplog.records if r.name == "asyncio"]
    assert rec.getMessage().startswith("direct")
    assert rec.exc_info[0] is KeyError


def test_failing_custom_handler_falls_back_to_default(loop, caplog):
    def bad_handler(lp, ctx):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(bad_handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(failing_callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any(m.startswith("Unhandled error in exception handler") for m in messages)


def test_unretrieved_task_exception_reaches_handler(loop):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))

    async def fails():
        raise ValueError("never retrieved")

    async def main():
        task = loop.create_task(fails())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert task.done()

    run(loop, main())
    gc.collect()
    messages = [c["message"] for _, c in contexts]
    assert "Task exception was never retrieved" in messages
    ctx = next(c for _, c in contexts if c["message"] == "Task exception was never retrieved")
    assert isinstance(ctx["exception"], ValueError)
    assert isinstance(ctx["future"], asyncio.Task)


def test_executor_job_exception_goes_to_the_awaiting_future(loop):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))

    def job():
        raise ArithmeticError("in job")

    async def main():
        with pytest.raises(ArithmeticError, match="in job"):
            await loop.run_in_executor(None, job)
        return await loop.run_in_executor(None, lambda: "still works")

    assert run(loop, main()) == "still works"
    assert contexts == []


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_from_callback_propagates_and_loop_stays_usable(loop, exc_type):
    ran = []

    def raiser():
        raise exc_type("out")

    loop.call_soon(raiser)
    loop.call_soon(ran.append, "after")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    # The rest of the interrupted batch is not lost: it runs on the next run.
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["after"]
    assert run(loop, asyncio.sleep(0, "usable")) == "usable"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_from_timer_propagates_and_loop_stays_usable(loop, exc_type):
    def raiser():
        raise exc_type("out")

    loop.call_later(0.001, raiser)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    assert run(loop, asyncio.sleep(0.001, "usable")) == "usable"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_from_task_propagates_from_run_until_complete(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type("in task")

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert not loop.is_running()
    assert run(loop, asyncio.sleep(0, "usable")) == "usable"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_from_exception_handler_propagates(loop, exc_type):
    def handler(lp, ctx):
        raise exc_type("from handler")

    loop.set_exception_handler(handler)
    loop.call_soon(failing_callback)
    with pytest.raises(exc_type):
        loop.run_forever()
    loop.set_exception_handler(None)
    assert run(loop, asyncio.sleep(0, "usable")) == "usable"


def test_threadsafe_callback_exception_names_the_handle_the_poster_got(loop):
    # The poster keeps its handle: the report names that very object, as on the stock
    # loop (weaveloop queues the callback, not the object, so this is worth checking).
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))
    posted = []

    def poster():
        posted.append(loop.call_soon_threadsafe(failing_callback))
        loop.call_soon_threadsafe(loop.stop)

    thread = start_thread(poster)
    join_or_fail(thread)
    loop.run_forever()
    [(_, ctx)] = contexts
    assert ctx["handle"] is posted[0]
    assert isinstance(ctx["exception"], ZeroDivisionError)


def test_callback_exception_after_the_handle_was_dropped_names_an_equal_handle(loop):
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))
    loop.call_soon(failing_callback)  # the returned handle is dropped at once
    loop.call_soon(loop.stop)
    loop.run_forever()
    [(_, ctx)] = contexts
    handle = ctx["handle"]
    assert isinstance(handle, type(loop.call_soon(print)))
    assert "failing_callback" in ctx["message"]
    assert not handle.cancelled()


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("schedule", ["call_soon", "call_later", "add_reader"])
def test_a_callback_that_cancelled_its_own_handle_is_reported_as_asyncio_does(
    loop, schedule, debug
):
    # asyncio's report names what the handle holds when the error is caught, and a
    # cancelled handle holds nothing: "Exception in callback None()". (Found by the
    # schedule differential test; weaveloop named the callback.)
    loop.set_debug(debug)
    contexts = []
    loop.set_exception_handler(_collecting_handler(contexts))
    handles = []
    reader, writer = socket.socketpair()

    def callback(tag):
        if schedule == "add_reader":
            loop.remove_reader(reader)  # cancels the watcher's handle
        else:
            handles[0].cancel()
        loop.stop()
        raise ZeroDivisionError(tag)

    try:
        if schedule == "call_soon":
            handles.append(loop.call_soon(callback, "soon"))
        elif schedule == "call_later":
            handles.append(loop.call_later(0, callback, "later"))
        else:
            writer.send(b"x")
            loop.add_reader(reader, callback, "reader")
        loop.run_forever()
    finally:
        reader.close()
        writer.close()
    [(_, ctx)] = contexts
    assert ctx["message"] == "Exception in callback None()"
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["handle"].cancelled()
    if not debug:
        # (In debug mode the repr kept at cancel() still names the callback.)
        assert "callback" not in repr(ctx["handle"])


_NAME = contextvars.ContextVar("_NAME", default="unset")


@pytest.mark.parametrize("scheduled_from", ["an empty context", "a context with a value"])
def test_the_handler_sees_the_context_the_failed_callback_ran_in(loop, scheduled_from):
    # Python 3.12+ runs the handler in the handle's context (get_context()): there it sees
    # what the callback set. A callback scheduled from an empty context runs, on
    # weaveloop, in a context it shares with others until one sets a variable: the
    # failed one's must be the one the handler sees, and the next callback's a new one.
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(("handler", _NAME.get())))

    def callback():
        _NAME.set("set by the callback")
        raise ZeroDivisionError

    def schedule():
        loop.call_soon(callback)
        loop.call_soon(lambda: seen.append(("next", _NAME.get())))
        loop.call_soon(loop.stop)

    if scheduled_from == "an empty context":
        contextvars.Context().run(schedule)
        before = "unset"
    else:
        context = contextvars.copy_context()
        context.run(_NAME.set, "set before")
        context.run(schedule)
        before = "set before"
    loop.run_forever()
    handler_sees = "set by the callback" if sys.version_info >= (3, 12) else _NAME.get()
    assert seen == [("handler", handler_sees), ("next", before)]


@pytest.mark.parametrize("schedule", ["call_soon", "call_later", "add_reader"])
def test_handler_runs_while_the_callback_exception_is_handled(loop, schedule):
    # As in asyncio, the handler is called from inside the `except` that caught the
    # callback's error: sys.exc_info() names it (logger.exception() and friends rely
    # on that), and code after the handler no longer sees it.
    seen = []
    after = []

    def handler(lp, context):
        seen.append((sys.exc_info()[1], context["exception"]))

    loop.set_exception_handler(handler)
    r, w = socket.socketpair()
    try:
        if schedule == "call_soon":
            loop.call_soon(failing_callback)
        elif schedule == "call_later":
            loop.call_later(0, failing_callback)
        else:

            def read_then_fail():
                loop.remove_reader(r)
                failing_callback()

            loop.add_reader(r, read_then_fail)
            w.send(b"x")

        def check_after():
            if not seen:
                loop.call_soon(check_after)
                return
            after.append(sys.exc_info())
            loop.stop()

        loop.call_soon(check_after)
        loop.run_forever()
    finally:
        r.close()
        w.close()
    assert len(seen) == 1
    handled, reported = seen[0]
    assert isinstance(reported, ZeroDivisionError)
    assert handled is reported
    assert after == [(None, None, None)]


def test_error_in_handler_is_chained_to_the_callback_error(loop, caplog):
    def handler(lp, context):
        raise ValueError("handler broke")

    loop.set_exception_handler(handler)
    loop.call_soon(failing_callback)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    records = [r for r in caplog.records if "Unhandled error in exception handler" in r.message]
    assert len(records) == 1
    exc = records[0].exc_info[1]
    assert isinstance(exc, ValueError)
    assert isinstance(exc.__context__, ZeroDivisionError)
    assert "During handling of the above exception" in caplog.text


def test_handler_leaves_an_enclosing_except_of_a_generator_as_it_was(loop):
    # The loop runs inside a generator entered in an `except`: after the handler, the
    # generator's view of the exception being handled is what it was, and once outside
    # the `except` it is none.
    loop.set_exception_handler(lambda lp, context: None)

    class Outer(Exception):
        pass

    def gen():
        loop.call_soon(failing_callback)
        loop.call_soon(loop.stop)
        loop.run_forever()
        yield sys.exc_info()[1]
        yield sys.exc_info()[1]

    try:
        raise Outer("outer")
    except Outer:
        g = gen()
        inside = next(g)
    after = next(g)
    assert isinstance(inside, Outer)
    assert after is None
