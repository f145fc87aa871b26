"""Tasks and futures made by the loop: create_future, create_task (name, context), factories.

Differential: every test runs on weaveloop and on the stock loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest
from _support import run


def test_create_future_belongs_to_the_loop(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert fut.get_loop() is loop
    assert not fut.done()
    fut.cancel()


def test_create_task_runs_the_coroutine(loop):
    async def work(x):
        await asyncio.sleep(0)
        return x * 2

    task = loop.create_task(work(21))
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == 42


def test_create_task_name(loop):
    async def work():
        return asyncio.current_task().get_name()

    task = loop.create_task(work(), name="my-task")
    assert task.get_name() == "my-task"
    assert loop.run_until_complete(task) == "my-task"


def test_create_task_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "from-ctx")

    async def work():
        return var.get()

    assert loop.run_until_complete(loop.create_task(work(), context=ctx)) == "from-ctx"
    assert loop.run_until_complete(loop.create_task(work())) == "default"


def test_create_task_rejects_non_coroutines(loop):
    with pytest.raises(TypeError):
        loop.create_task(lambda: None)


def test_task_factory_is_used_and_can_be_reset(loop):
    made = []

    def factory(lp, coro, **kwargs):
        made.append(kwargs)
        return asyncio.Task(coro, loop=lp, **kwargs)

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def work():
        return "ok"

    task = loop.create_task(work(), name="n")
    assert len(made) == 1
    assert task.get_name() == "n"
    assert loop.run_until_complete(task) == "ok"
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_task_factory_gets_the_context_as_a_keyword(loop):
    # As the stock create_task: factory(loop, coro) without a context, and
    # factory(loop, coro, context=ctx) with one; the name is set on the task afterwards.
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, sorted(kwargs)))
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    var = contextvars.ContextVar("var", default="unset")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")

    async def read():
        return var.get()

    plain = loop.create_task(read(), name="plain")
    given = loop.create_task(read(), name="given", context=ctx)
    assert calls == [(loop, []), (loop, ["context"])]
    assert (plain.get_name(), given.get_name()) == ("plain", "given")
    assert loop.run_until_complete(asyncio.gather(plain, given)) == ["unset", "in ctx"]


def test_set_task_factory_rejects_non_callables(loop):
    with pytest.raises(TypeError):
        loop.set_task_factory(42)


def test_gather_of_many_tasks(loop):
    async def work(i):
        await asyncio.sleep(0)
        return i

    async def main():
        return await asyncio.gather(*(work(i) for i in range(5000)))

    assert run(loop, main()) == list(range(5000))


def test_task_cancellation(loop):
    seen = []

    async def victim(started):
        started.set_result(None)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def main():
        started = loop.create_future()
        task = loop.create_task(victim(started))
        await started
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(loop, main()) is True
    assert seen == ["cancelled"]


def test_sleep_and_wait_for_timeout(loop):
    async def main():
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.sleep(3600), 0.01)
        await asyncio.sleep(0.001)
        return "ok"

    assert run(loop, main()) == "ok"


class _Wrapper:
    """A wrapt-style replacement: a descriptor object, not a function."""

    def __init__(self, wrapped, calls):
        self.wrapped, self.calls = wrapped, calls

    def __get__(self, obj, owner=None):
        def bound(coro, **kwargs):
            self.calls.append(sorted(kwargs))
            return self.wrapped(obj, coro, **kwargs)

        return bound


@pytest.mark.parametrize("style", ["function", "descriptor"])
def test_a_create_task_replaced_on_asyncio_base_class_runs(loop, monkeypatch, style):
    # APM agents (New Relic) replace BaseEventLoop.create_task on the class, which the
    # stock loops inherit; weaveloop's own create_task hands over to the replacement.
    stock = asyncio.BaseEventLoop.create_task
    calls = []
    if style == "function":

        def replacement(self, coro, **kwargs):
            calls.append(sorted(kwargs))
            return stock(self, coro, **kwargs)

    else:
        replacement = _Wrapper(stock, calls)
    monkeypatch.setattr(asyncio.BaseEventLoop, "create_task", replacement)

    async def child():
        return "ran"

    async def main():
        task = asyncio.get_running_loop().create_task(child(), name="named")
        assert task.get_name() == "named"
        return await task, await asyncio.ensure_future(child())

    assert run(loop, main()) == ("ran", "ran")
    # (_support.run's own task first, then the two of main.)
    assert calls[-2:] == [["name"], []]
    monkeypatch.undo()
    calls.clear()
    assert run(loop, main()) == ("ran", "ran")
    assert calls == []


def test_create_task_with_other_keywords_is_asyncio_s_own(loop):
    # Keywords beyond name and context: asyncio's create_task refuses them with its
    # TypeError up to Python 3.13.2, and takes them from 3.13.3 (passing them on).
    async def child():
        pass

    coro = child()
    try:
        with pytest.raises(TypeError, match="unexpected keyword argument 'surprise'"):
            loop.create_task(coro, surprise=1)
    finally:
        coro.close()


def test_create_task_passes_other_keywords_to_a_create_task_that_takes_them(loop, monkeypatch):
    # As asyncio's own from Python 3.13.3 (its signature there), here a replacement.
    stock = asyncio.BaseEventLoop.create_task
    seen = []

    def create_task(self, coro, *, name=None, context=None, **kwargs):
        seen.append((name, kwargs))
        return stock(self, coro, name=name, context=context)

    monkeypatch.setattr(asyncio.BaseEventLoop, "create_task", create_task)

    async def child():
        return "ran"

    task = loop.create_task(child(), name="n", eager_start=False, extra=1)
    assert loop.run_until_complete(task) == "ran"
    assert seen == [("n", {"eager_start": False, "extra": 1})]


@pytest.mark.skipif(
    not hasattr(asyncio.tasks, "_set_task_name"), reason="Python 3.13 has no such warning"
)
def test_a_factory_task_without_set_name_is_warned_about_at_the_caller_s_line(loop):
    bare = object()
    loop.set_task_factory(lambda loop, coro: (coro.close(), bare)[1])

    async def child():
        pass

    with pytest.warns(DeprecationWarning, match=r"Task.set_name\(\) was added") as record:
        line = sys._getframe().f_lineno + 1
        assert loop.create_task(child(), name="n") is bare
    assert [(w.filename, w.lineno) for w in record] == [(__file__, line)]


def test_a_factory_result_without_set_name_as_on_the_stock_loop(loop_factory):
    # What the stock create_task does with a factory's result that has no set_name
    # changed between versions (3.13.0 calls it, also with no name; 3.11 and 3.12 only
    # with one, and warn without it): both loops of one interpreter agree.
    async def child():
        pass

    def outcome(loop):
        loop.set_task_factory(lambda loop, coro: (coro.close(), 42)[1])
        try:
            return loop.create_task(child())
        except AttributeError as e:
            return type(e)
        finally:
            loop.close()

    assert outcome(loop_factory()) == outcome(asyncio.new_event_loop())
