"""Running and closing: run_forever, run_until_complete, stop, close, entry points, options.

Differential where both loops share the behaviour; the weaveloop entry points (run,
Runner with loop_factory, EventLoopPolicy, install, options) are weaveloop by nature.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import os
import signal
import socket
import sys
import textwrap
import threading
import warnings
import weakref

import pytest
import weaveloop
from _support import (
    SAFETY,
    assert_fork_script_passes,
    needs_parked_detection,
    run,
    run_python,
)


def test_loop_is_an_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)


def test_weaveloop_loop_class(wloop):
    assert isinstance(wloop, weaveloop.Loop)
    assert issubclass(weaveloop.Loop, asyncio.AbstractEventLoop)


def test_a_subclass_takes_constructor_arguments_of_its_own():
    # As subclasses of the stock loop (and uvloop's) do; the options it passes on are
    # still checked.
    class Tagged(weaveloop.Loop):
        def __init__(self, tag, *, strict=True):
            super().__init__(strict_threads=strict)
            self.tag = tag

    for lp in (Tagged("a"), Tagged(tag="b", strict=False)):
        try:
            assert lp.run_until_complete(asyncio.sleep(0, lp.tag)) == lp.tag
        finally:
            lp.close()
    with asyncio.Runner(loop_factory=lambda: Tagged("c")) as runner:
        assert runner.run(asyncio.sleep(0, "done")) == "done"
        assert runner.get_loop().tag == "c"
    with pytest.raises(TypeError, match="strict_threads must be a bool"):
        Tagged("d", strict=1)


def test_loop_options_stay_keyword_only():
    with pytest.raises(TypeError, match="keyword-only"):
        weaveloop.Loop(True)


def test_run_until_complete_returns_the_result(loop):
    async def main():
        await asyncio.sleep(0)
        return 42

    assert loop.run_until_complete(main()) == 42


def test_run_until_complete_accepts_a_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_raises_the_exception(loop):
    async def main():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        loop.run_until_complete(main())


def test_run_until_complete_rejects_non_awaitables(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(42)


def test_run_until_complete_rejects_a_future_of_another_loop(loop, make_loop):
    other = make_loop()
    fut = other.create_future()
    with pytest.raises(ValueError):
        loop.run_until_complete(fut)


def test_run_until_complete_stopped_early_raises(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed."):
        loop.run_until_complete(fut)


def test_run_until_complete_leaves_later_callbacks_for_the_next_run(loop):
    ran = []

    async def main():
        loop.call_soon(ran.append, "after")
        return "result"

    assert loop.run_until_complete(main()) == "result"
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["after"]


def test_is_running_and_running_loop(loop):
    seen = []

    def probe():
        seen.append((loop.is_running(), asyncio.get_running_loop() is loop))
        seen.append(asyncio.get_event_loop() is loop)
        loop.stop()

    assert not loop.is_running()
    loop.call_soon(probe)
    loop.run_forever()
    assert seen == [(True, True), True]
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None


def test_loop_runs_again_after_stop(loop):
    for i in range(5):
        ran = []
        loop.call_soon(ran.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert ran == [i]


def test_clearing_stopping_cancels_a_stop_made_after_the_loop_stopped(loop):
    # Sanic's shutdown: stop() again (a signal handler) after run_forever returned, then
    # `loop._stopping = False` so that run_until_complete runs its coroutine to the end.
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.stop()
    assert loop._stopping is True
    loop._stopping = False
    assert loop._stopping is False

    async def main():
        await asyncio.sleep(0)
        return "ran"

    assert loop.run_until_complete(main()) == "ran"


def test_setting_stopping_in_a_callback_stops_the_loop_after_its_iteration(loop):
    ran = []

    def stop_by_attribute():
        loop.call_soon(ran.append, "next iteration")
        loop._stopping = 1

    safety_net = loop.call_later(5, loop.stop)
    loop.call_soon(stop_by_attribute)
    loop.call_soon(ran.append, "same iteration")
    loop.run_forever()
    assert ran == ["same iteration"]
    assert loop._stopping is False
    safety_net.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == ["same iteration", "next iteration"]


def test_unclosed_loop_warns_when_collected(loop_factory):
    lp = loop_factory()
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        del lp
        gc.collect()


_UNCLOSED_AT_EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, warnings
    import weaveloop
    warnings.simplefilter("default", ResourceWarning)
    factory = {"asyncio": asyncio.new_event_loop, "weaveloop": weaveloop.new_event_loop}
    loop = factory[sys.argv[1]]()
    print("debug:", loop.get_debug())
    # Never closed: the loop is finalized while the interpreter shuts down, when
    # sys.modules is being emptied and no import works any more.
    """
)


@pytest.mark.parametrize("debug", ["", "1"], ids=["plain", "debug"])
def test_unclosed_loop_finalized_at_exit_closes_fully(loop_kind, debug):
    # The finalizer's close() (warning included) ran halfway on weaveloop in debug mode:
    # cancelling the self-pipe's reader looked up an asyncio helper for the first time,
    # the import failed ("sys.meta_path is None"), and the self-pipe's sockets leaked.
    if loop_kind == "asyncio" and debug and sys.version_info >= (3, 13):
        pytest.skip("Python 3.13's own loop fails here: its handle repr reads source lines")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE")}
    if debug:
        env["PYTHONASYNCIODEBUG"] = debug
    out = run_python(_UNCLOSED_AT_EXIT_SCRIPT, loop_kind, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"debug: {bool(debug)}"]
    warned = [line for line in out.stderr.splitlines() if "Warning" in line]
    assert len(warned) == 1, out.stderr
    assert "ResourceWarning: unclosed event loop" in warned[0]
    assert "Exception ignored" not in out.stderr


_DAEMON_LOOP_AT_EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, concurrent.futures, socket, sys, threading, time
    import weaveloop
    factory = {"asyncio": asyncio.new_event_loop, "weaveloop": weaveloop.new_event_loop}
    kind, where = sys.argv[1], sys.argv[2]
    busy = threading.Event()

    def forever():
        busy.set()
        while True:
            time.sleep(0.0005)  # lets go of the GIL, and takes it back

    class Stream(asyncio.Protocol):
        def data_received(self, data):
            forever()

    class Buffered(asyncio.BufferedProtocol):
        def get_buffer(self, hint):
            return bytearray(100)

        def buffer_updated(self, n):
            forever()

    class Datagram(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            forever()

    def noop():
        pass

    def schedule_forever(loop):
        busy.set()
        while True:
            loop.call_soon(noop)  # debug mode runs Python code inside call_soon

    class Clock({"asyncio": asyncio.SelectorEventLoop, "weaveloop": weaveloop.Loop}[kind]):
        def time(self):
            busy.set()
            time.sleep(0.0005)
            return super().time()

    async def tick_forever():
        while True:
            await asyncio.sleep(0.0001)  # each call_later asks time()

    class SlowSubmit(concurrent.futures.ThreadPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            forever()

    def in_thread():
        loop = Clock() if where == "time()" else factory[kind]()
        if where == "debug call_soon":
            loop.set_debug(True)
            loop.call_soon(schedule_forever, loop)
        elif where == "foreign executor's submit()":
            loop.call_soon(loop.run_in_executor, SlowSubmit(), noop)
        elif where == "time()":
            loop.create_task(tick_forever())
        elif where == "datagram_received":
            loop.run_until_complete(loop.create_datagram_endpoint(Datagram, sock=ours))
        else:
            proto = Stream if where == "data_received" else Buffered
            loop.run_until_complete(loop.connect_accepted_socket(proto, ours))
        loop.run_forever()

    if where == "datagram_received":  # IPv4: the datagram reader that is Rust
        ours, theirs = socket.socket(type=socket.SOCK_DGRAM), socket.socket(type=socket.SOCK_DGRAM)
        ours.bind(("127.0.0.1", 0))
        theirs.connect(ours.getsockname())
    else:
        ours, theirs = socket.socketpair()
    threading.Thread(target=in_thread, daemon=True).start()
    theirs.send(b"x")
    busy.wait(30)
    print("main exits")
    """
)


@pytest.mark.parametrize(
    "where",
    [
        "data_received",
        "buffer_updated",
        "datagram_received",
        "debug call_soon",
        "time()",
        "foreign executor's submit()",
    ],
)
def test_interpreter_exits_while_a_daemon_threads_loop_runs_python_code(loop_kind, where):
    # A daemon thread that takes the GIL back once finalization has begun is ended by
    # CPython (3.11-3.13) with a forced unwind. Out of Python code that Rust code called
    # (a protocol callback from a Rust reader, the debug checks of call_soon) it aborted
    # the process (also a loop subclass's time() and a foreign executor's submit(), which
    # Rust code calls); now the thread is parked, and the process exits as the stock one does.
    out = run_python(_DAEMON_LOOP_AT_EXIT_SCRIPT, loop_kind, where)
    assert (out.returncode, out.stdout) == (0, "main exits\n"), out.stderr


@pytest.mark.parametrize(
    "refers_back",
    [
        "callback",
        "argument",
        "first of two arguments",
        "second of two arguments",
        "second of two timer arguments",
        "one of three arguments",
    ],
)
def test_unclosed_loop_is_garbage_collected(loop_factory, refers_back):
    # A pending callback is the only way back to the loop, through its callable or its
    # arguments: each has to be seen by the cyclic GC however the handle keeps it (none,
    # one and two arguments apart from their tuple, more in it). Never run.
    lp = loop_factory()
    if refers_back == "callback":
        lp.call_soon(lp.stop)
    elif refers_back == "argument":
        lp.call_soon(id, lp)
    elif refers_back == "first of two arguments":
        lp.call_soon(getattr, lp, "stop")
    elif refers_back == "second of two arguments":
        lp.call_soon(print, "x", lp)
    elif refers_back == "second of two timer arguments":
        lp.call_later(3600, print, "x", lp)
    else:
        lp.call_soon(print, "x", lp, "z")
    ref = weakref.ref(lp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del lp
        gc.collect()
    assert ref() is None


def test_closed_loop_is_garbage_collected(loop_factory):
    lp = loop_factory()
    run(lp, lp.run_in_executor(None, int))
    lp.call_soon(lp.stop)
    lp.call_later(3600, lp.stop)
    lp.close()
    ref = weakref.ref(lp)
    del lp
    gc.collect()
    assert ref() is None


def test_close_is_idempotent(loop):
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()
    assert loop.is_closed()


def test_close_while_running_raises(loop):
    errors = []

    def try_close():
        try:
            loop.close()
        except RuntimeError as e:
            errors.append(str(e))
        loop.stop()

    loop.call_soon(try_close)
    loop.run_forever()
    assert errors == ["Cannot close a running event loop"]
    assert not loop.is_closed()


def test_close_drops_pending_callbacks(loop):
    ran = []
    loop.call_soon(ran.append, 1)
    loop.call_later(0, ran.append, 2)
    loop.close()
    assert ran == []


@pytest.mark.parametrize("queue", ["ready", "timers"])
def test_a_finalizer_of_a_dropped_callback_finds_the_loop_closed(loop, queue, monkeypatch):
    # close() marks the loop closed, then lets go of what it drops: a finalizer that
    # schedules something then fails with 'Event loop is closed' (reported as ignored).
    failures = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: failures.append(u.exc_value))

    class SchedulesWhenFreed:
        def __del__(self):
            loop.call_soon(print, "never")

    if queue == "ready":
        loop.call_soon(print, SchedulesWhenFreed())
    else:
        loop.call_later(1, print, SchedulesWhenFreed())
    loop.close()
    assert [(type(e), str(e)) for e in failures] == [(RuntimeError, "Event loop is closed")]


#: CPython 3.13.0's own loop, once a nested run_forever() was refused, takes itself for
#: not running (its clean-up ran for the refused run): it then lets a nested run start.
_STOCK_FORGETS_IT_RUNS = sys.version_info[:3] == (3, 13, 0)


def test_run_forever_while_running_raises(loop, loop_kind):
    if loop_kind == "asyncio" and _STOCK_FORGETS_IT_RUNS:
        pytest.skip("CPython 3.13.0's loop forgets it runs after a refused nested run")
    errors = []

    coro = asyncio.sleep(0)

    def reenter():
        for method in (loop.run_forever, lambda: loop.run_until_complete(coro)):
            try:
                method()
            except RuntimeError as e:
                errors.append(str(e))
        loop.stop()

    loop.call_soon(reenter)
    loop.run_forever()
    coro.close()
    assert errors == ["This event loop is already running"] * 2
    assert loop.is_running() is False


def test_running_a_second_loop_in_a_running_loop_raises(loop, make_loop, loop_kind):
    if loop_kind == "asyncio" and _STOCK_FORGETS_IT_RUNS:
        pytest.skip("CPython 3.13.0's loop forgets a loop runs after a refused nested run")
    inner = make_loop()
    errors = []
    coro = asyncio.sleep(0)

    def nested():
        try:
            inner.run_forever()
        except RuntimeError as e:
            errors.append(str(e))
        try:
            inner.run_until_complete(coro)
        except RuntimeError as e:
            errors.append(str(e))
        loop.stop()

    loop.call_soon(nested)
    loop.run_forever()
    coro.close()
    assert errors == ["Cannot run the event loop while another loop is running"] * 2
    assert not inner.is_running()
    # Both loops still work afterwards.
    assert inner.run_until_complete(asyncio.sleep(0, "inner")) == "inner"
    assert loop.run_until_complete(asyncio.sleep(0, "outer")) == "outer"


def test_asyncio_runner_with_loop_factory(loop_factory):
    async def main():
        return asyncio.get_running_loop()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        lp = runner.run(main())
        assert lp is runner.get_loop()
        assert runner.run(asyncio.sleep(0, "again")) == "again"
    assert lp.is_closed()


def test_asyncio_runner_with_weaveloop_factory():
    async def main():
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=weaveloop.new_event_loop) as runner:
        assert runner.run(main()) is weaveloop.Loop


def test_event_loop_name_is_the_loop_class_as_asyncio_3_13_names_its_own():
    async def main():
        return type(asyncio.get_running_loop())

    assert weaveloop.EventLoop is weaveloop.Loop
    with asyncio.Runner(loop_factory=weaveloop.EventLoop) as runner:
        assert runner.run(main()) is weaveloop.Loop
    if sys.version_info >= (3, 12):
        assert asyncio.run(main(), loop_factory=weaveloop.EventLoop) is weaveloop.Loop


def test_weaveloop_run_returns_the_result_on_a_weaveloop_loop():
    async def main():
        lp = asyncio.get_running_loop()
        await asyncio.sleep(0)
        return type(lp), lp.get_debug()

    assert weaveloop.run(main()) == (weaveloop.Loop, False)


def test_weaveloop_run_debug():
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert weaveloop.run(main(), debug=True) is True


def test_weaveloop_run_passes_options():
    async def main():
        return asyncio.get_running_loop()

    lp = weaveloop.run(main(), strict_threads=False, executor_workers=2)
    assert isinstance(lp, weaveloop.Loop)
    assert lp.is_closed()


def test_weaveloop_run_propagates_exceptions():
    async def main():
        raise LookupError("inside")

    with pytest.raises(LookupError, match="inside"):
        weaveloop.run(main())


def test_weaveloop_run_inside_a_running_loop_raises(loop):
    # Like asyncio.run: refused up front, without creating (and leaking) a second loop.
    async def outer():
        coro = asyncio.sleep(0)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with pytest.raises(
                    RuntimeError, match="cannot be called from a running event loop"
                ):
                    weaveloop.run(coro)
                gc.collect()
        finally:
            coro.close()
        return [str(w.message) for w in caught]

    assert run(loop, outer()) == []


def test_weaveloop_run_shuts_down_asyncgens_and_default_executor():
    finalized = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            finalized.append("agen")

    async def main():
        g = agen()
        await g.__anext__()
        lp = asyncio.get_running_loop()
        await lp.run_in_executor(None, lambda: None)
        main.executor = lp._default_executor
        main.g = g

    weaveloop.run(main())
    assert finalized == ["agen"]
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        main.executor.submit(lambda: None)


_CURRENT_LOOP_SCRIPT = textwrap.dedent(
    """
    import asyncio, subprocess, sys, warnings
    import weaveloop

    warnings.simplefilter("error")
    if hasattr(asyncio, "SafeChildWatcher"):  # 3.11: a watcher that needs a loop
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_child_watcher(asyncio.SafeChildWatcher())
    run = weaveloop.run if sys.argv[1] == "weaveloop" else asyncio.run

    async def main():
        loop = asyncio.get_running_loop()
        current = asyncio.get_event_loop_policy().get_event_loop()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        return current is loop, await proc.wait(), loop

    is_current, code, loop = run(main())
    print("current inside:", is_current, "subprocess exit:", code)
    print("closed after:", loop.is_closed())
    try:
        asyncio.get_event_loop()
    except RuntimeError as exc:
        print("after:", type(exc).__name__)
    """
)


@pytest.mark.parametrize("runner", ["asyncio", "weaveloop"])
def test_run_makes_its_loop_the_current_loop_while_it_runs(runner):
    # As asyncio.run: the policy's get_event_loop() inside main is the running loop (not a
    # second stock loop), a child watcher that needs a loop gets it, and no loop is left
    # current afterwards.
    out = run_python(_CURRENT_LOOP_SCRIPT, runner)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == [
        "current inside: True subprocess exit: 0",
        "closed after: True",
        "after: RuntimeError",
    ]


def test_event_loop_policy_makes_weaveloop_loops():
    policy = weaveloop.EventLoopPolicy()
    lp = policy.new_event_loop()
    try:
        assert isinstance(lp, weaveloop.Loop)
    finally:
        lp.close()


def test_event_loop_policy_passes_options():
    policy = weaveloop.EventLoopPolicy(executor_workers=3)
    lp = policy.new_event_loop()
    try:

        async def main():
            await lp.run_in_executor(None, lambda: None)
            return lp._default_executor._max_workers

        assert run(lp, main()) == 3
    finally:
        lp.close()


def test_install_makes_asyncio_run_use_weaveloop():
    weaveloop.install()

    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main()) is weaveloop.Loop
    lp = asyncio.new_event_loop()
    try:
        assert isinstance(lp, weaveloop.Loop)
    finally:
        lp.close()


@pytest.mark.parametrize(
    "make",
    [
        lambda: weaveloop.new_event_loop(no_such_option=1),
        lambda: weaveloop.Loop(no_such_option=1),
        lambda: weaveloop.EventLoopPolicy(no_such_option=1),
        lambda: weaveloop.install(no_such_option=1),
    ],
    ids=["new_event_loop", "Loop", "EventLoopPolicy", "install"],
)
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_unknown_option_is_a_type_error(make):
    policy = asyncio.get_event_loop_policy()
    with pytest.raises(TypeError, match="no_such_option"):
        make()
    gc.collect()  # a half-built loop must be collected quietly (no error in __del__)
    assert asyncio.get_event_loop_policy() is policy


def test_weaveloop_run_unknown_option_is_a_type_error():
    coro = asyncio.sleep(0)
    try:
        with pytest.raises(TypeError, match="no_such_option"):
            weaveloop.run(coro, no_such_option=1)
    finally:
        coro.close()


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        weaveloop.new_event_loop(True)


def test_loop_options_are_documented():
    assert {"strict_threads", "executor_workers"} <= set(weaveloop.LOOP_OPTIONS)
    for name, doc in weaveloop.LOOP_OPTIONS.items():
        assert isinstance(doc, str) and doc, name


@pytest.mark.parametrize(
    "options, exc",
    [
        ({"strict_threads": "yes"}, TypeError),
        ({"executor_workers": "4"}, TypeError),
        ({"executor_workers": 0}, ValueError),
        ({"executor_workers": -1}, ValueError),
    ],
)
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_invalid_option_values_are_rejected(options, exc):
    with pytest.raises(exc):
        weaveloop.new_event_loop(**options)
    gc.collect()  # a half-built loop must be collected quietly (no error in __del__)


def test_close_releases_the_loops_file_descriptors(loop_factory):
    # As the stock loop closes its selector: a closed loop that is still referenced
    # holds no fd.
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    loops = [loop_factory() for _ in range(10)]
    assert open_fds() - before >= 3 * len(loops)
    for lp in loops:
        lp.close()
    assert open_fds() == before


def test_a_forked_child_that_closes_its_loop_holds_none_of_its_fds(loop_factory):
    # The child gets the loop's fds from the parent and a fresh poller of its own (on
    # weaveloop); after close() neither remains.
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    base = open_fds()
    lp = loop_factory()
    try:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                lp.run_until_complete(asyncio.sleep(0))
                lp.close()
                code = 0 if open_fds() == base else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        lp.close()


PARKED_IN_ANOTHER_THREAD_AT_FORK = textwrap.dedent(
    """
    import os, sys, threading
    from _support import FACTORIES, wait_until_parked
    loop = FACTORIES[sys.argv[1]]()
    started = threading.Event()
    def main():
        started.set()
        loop.run_forever()
    t = threading.Thread(target=main)
    t.start()
    started.wait()
    wait_until_parked(t.native_id)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    loop.call_soon_threadsafe(loop.stop)
    t.join()
    loop.close()
    print("child exit", os.waitstatus_to_exitcode(status))
    """
)


@needs_parked_detection
def test_fork_while_a_loop_is_parked_in_another_thread(loop_kind):
    # The child inherits the poller's lock held by a thread it does not have; its
    # after-fork reset must not wait for it.
    assert_fork_script_passes(PARKED_IN_ANOTHER_THREAD_AT_FORK, loop_kind)


RUNNING_IN_ANOTHER_THREAD_AT_FORK = textwrap.dedent(
    """
    import asyncio, os, sys, threading
    from _support import FACTORIES
    loop = FACTORIES[sys.argv[1]]()
    started, release = threading.Event(), threading.Event()
    async def main():
        started.set()
        await loop.run_in_executor(None, release.wait)
    t = threading.Thread(target=loop.run_until_complete, args=(main(),))
    t.start()
    started.wait()
    pid = os.fork()
    if pid == 0:
        os._exit(0 if not loop.is_running() or sys.argv[1] == "asyncio" else 1)
    _, status = os.waitpid(pid, 0)
    release.set()
    t.join()
    loop.close()
    print("child exit", os.waitstatus_to_exitcode(status))
    """
)


def test_a_loop_running_in_another_thread_is_not_running_in_a_forked_child(loop_kind):
    # Its thread does not exist in the child (the stock loop still says it runs). The
    # after-fork reset, which cancels the executor job in flight, must not fail on it.
    assert_fork_script_passes(RUNNING_IN_ANOTHER_THREAD_AT_FORK, loop_kind, quiet=True)


FORKED_INSIDE_A_TASK_STEP = textwrap.dedent(
    """
    import asyncio, os, threading
    import weaveloop
    loop = weaveloop.new_event_loop()
    inside, release = threading.Event(), threading.Event()
    async def stuck():
        inside.set()
        release.wait()  # the loop's thread is inside this task's step at the fork
    t = threading.Thread(target=loop.run_until_complete, args=(stuck(),))
    t.start()
    inside.wait()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            async def child():
                await asyncio.sleep(0)
                return "ran"
            loop.call_later(30, loop.stop)  # safety net: a task that cannot enter
            code = 0 if loop.run_until_complete(child()) == "ran" else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    release.set()
    t.join()
    loop.close()
    print("child exit", os.waitstatus_to_exitcode(status))
    """
)


def test_a_child_forked_while_a_task_step_ran_in_another_thread_runs_tasks():
    # asyncio still named the parent's task, stepped by a thread the child does not
    # have, as the loop's current task: every task then failed to enter in the child.
    assert_fork_script_passes(FORKED_INSIDE_A_TASK_STEP, "weaveloop", quiet=True)


FORKED_FROM_A_CALLBACK = textwrap.dedent(
    """
    import os, signal
    import weaveloop
    loop = weaveloop.new_event_loop()
    inherited = os.fstat(loop._ssock.fileno()).st_ino
    child = {}
    def fork():
        pid = os.fork()
        if pid == 0:  # the loop goes on running in the child, in this same thread
            child["fresh"] = os.fstat(loop._ssock.fileno()).st_ino != inherited
            child["wakeup"] = signal.set_wakeup_fd(-1) == loop._csock.fileno()
            signal.set_wakeup_fd(loop._csock.fileno())
            loop.add_signal_handler(signal.SIGUSR1, lambda: (child.update(ran=True), loop.stop()))
            loop.call_later(30, loop.stop)  # safety net
            signal.raise_signal(signal.SIGUSR1)
            return
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        loop.stop()
    loop.call_soon(fork)
    loop.run_forever()
    if child:
        os._exit(0 if child == {"fresh": True, "wakeup": True, "ran": True} else 1)
    loop.close()
    """
)


def test_a_forked_child_gets_a_self_pipe_of_its_own():
    # The inherited socket pair is shared with the parent, whose loop read the child's
    # signal bytes (and the parent's handlers ran for the child's signals); the signal
    # wake-up fd moves to the child's new pair.
    assert_fork_script_passes(FORKED_FROM_A_CALLBACK, "weaveloop", quiet=True)


FORKED_WORKER_RUNS_A_LOOP_OF_ITS_OWN = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import weaveloop
    loop = weaveloop.new_event_loop() if sys.argv[1] == "weaveloop" else asyncio.new_event_loop()
    async def sleeper():
        return await asyncio.sleep(0, "own loop")
    async def main():
        # As multiprocessing's and ProcessPoolExecutor's "fork" workers do: the child
        # runs code of its own, from inside the parent's task, and never returns to it.
        pid = os.fork()
        if pid == 0:
            signal.alarm(30)  # safety net: a hung child dies instead of lingering
            code = 1
            try:
                no_running_loop = asyncio._get_running_loop() is None
                code = 0 if no_running_loop and asyncio.run(sleeper()) == "own loop" else 1
            finally:
                os._exit(code)
        _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        return os.waitstatus_to_exitcode(status)
    print("child exit", loop.run_until_complete(main()))
    loop.close()
    """
)


def test_a_child_forked_from_a_task_may_run_a_loop_of_its_own(loop_kind):
    # The parent's loop is not the running loop in the child, as on the stock loop:
    # it stayed so once, and asyncio.run() in a forked worker raised "cannot be called
    # from a running event loop".
    assert_fork_script_passes(FORKED_WORKER_RUNS_A_LOOP_OF_ITS_OWN, loop_kind, quiet=True)


needs_run_forever_hooks = pytest.mark.skipif(
    sys.version_info < (3, 13), reason="the stock loop has the run_forever hooks from 3.13"
)


@needs_run_forever_hooks
def test_a_loop_driven_by_hand_between_the_run_forever_hooks(loop):
    # Python 3.13's hooks, for a GUI toolkit's loop that drives asyncio's by calling
    # _run_once() (Toga's does). weaveloop's failed in setup: `_thread_id` is read-only.
    task = loop.create_task(asyncio.sleep(0, "done"))
    loop._run_forever_setup()
    try:
        assert loop.is_running()
        assert asyncio.get_running_loop() is loop
        assert loop._thread_id == threading.get_ident()
        while not task.done():
            loop._run_once()
    finally:
        loop._run_forever_cleanup()
    assert task.result() == "done"
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    assert loop._thread_id is None
    assert run(loop, asyncio.sleep(0, "runs again")) == "runs again"


@needs_run_forever_hooks
def test_run_forever_goes_through_hooks_a_subclass_extends(loop_kind):
    # weaveloop's run_forever did its setup and cleanup inline: a subclass's never ran.
    base = type(
        weaveloop.new_event_loop() if loop_kind == "weaveloop" else asyncio.new_event_loop()
    )
    steps = []

    class Logged(base):
        def _run_forever_setup(self):
            super()._run_forever_setup()
            steps.append(("setup", self.is_running()))

        def _run_forever_cleanup(self):
            super()._run_forever_cleanup()
            steps.append(("cleanup", self.is_running()))

    lp = Logged()
    try:
        assert lp.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        lp.close()
    assert steps == [("setup", True), ("cleanup", False)]


def test_a_setup_that_fails_late_undoes_itself_without_the_subclass_cleanup():
    # weaveloop-only: its setup undoes what it did when a later step of it fails. It did
    # so through the subclass's cleanup, which may pair with the subclass's own setup
    # (never run here); one that raised first left the loop running for good.
    class Paired(weaveloop.Loop):
        def _run_forever_cleanup(self):
            raise AssertionError("cleanup without its setup")

        def _install_wakeup_fd(self):  # a late step of the base setup, failing
            raise KeyboardInterrupt

    lp = Paired()
    try:
        with pytest.raises(KeyboardInterrupt):
            lp.run_forever()
        assert not lp.is_running()
        assert asyncio._get_running_loop() is None
    finally:
        weaveloop.Loop._run_forever_cleanup(lp)
        lp.close()


@pytest.mark.parametrize("which", ["this loop", "another loop"])
def test_a_run_forever_refused_inside_a_run_leaves_that_run_as_it_was(
    loop, loop_kind, make_loop, which
):
    # A setup that fails (a loop already runs here) undoes nothing of the run going on:
    # its loop is still the running loop, on this thread. (CPython 3.13.0's cleanup
    # undid it: gh-130145, fixed in later releases.)
    if loop_kind == "asyncio" and sys.version_info[:3] == (3, 13, 0):
        pytest.skip("CPython 3.13.0 clears the running loop here (gh-130145)")
    other = make_loop() if which == "another loop" else loop
    message = "already running" if other is loop else "while another loop is running"

    async def main():
        with pytest.raises(RuntimeError, match=message):
            other.run_forever()
        return loop.is_running(), asyncio.get_running_loop() is loop, loop._thread_id

    assert run(loop, main()) == (True, True, threading.get_ident())
    assert not other.is_running()


FORKED_DURING_ANOTHER_THREADS_FIRST_RUN = textwrap.dedent(
    """
    import asyncio, os, signal, sys, threading
    import concurrent.futures.thread  # (imported ahead: CPython's import locks are not
    import weaveloop                  # what this checks)
    from _support import reap_child
    started = threading.Event()
    async def main():
        return await asyncio.to_thread(pow, 2, 2)
    def first_use():  # the process's first loop and first executor job
        started.set()
        weaveloop.run(main())
    t = threading.Thread(target=first_use)
    t.start()
    started.wait()
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)  # safety net: a hung child dies instead of lingering
        os._exit(0 if weaveloop.run(main()) == 4 else 1)
    print(reap_child(pid))
    t.join()
    """
)


def test_a_fork_during_another_threads_first_use_leaves_the_child_working():
    # What the binding layer sets up on first use (its imports, its interned names)
    # was kept in pyo3's once-cells, which let go of the GIL while marked "being set
    # up": a fork in that window (by the GIL's holder) gave the child a cell no thread
    # would ever finish, and its first loop hung for good (about one child in two).
    # Each run is a fresh interpreter, so each fork meets the first use again.
    for _ in range(8):
        assert_fork_script_passes(FORKED_DURING_ANOTHER_THREADS_FIRST_RUN, "weaveloop")


def test_a_busy_loop_lets_threads_back_from_blocking_io_have_the_gil(loop):
    # Rule 1: a loop that always has work ready still gives the GIL up at every
    # iteration, as the stock loop's select(0) does, so threads doing blocking I/O
    # make progress (not only at the interpreter's forced switch, every 5 ms).
    rounds = 200
    a, b = socket.socketpair()

    def echo():
        for _ in range(rounds):
            b.sendall(b.recv(1))

    def client():
        for _ in range(rounds):
            a.sendall(b"x")
            a.recv(1)

    async def main():
        echoer = threading.Thread(target=echo)
        echoer.start()
        done = loop.run_in_executor(None, client)
        iterations = 0
        while not done.done():
            iterations += 1
            await asyncio.sleep(0)
        await done
        echoer.join()
        return iterations

    try:
        # Each round trip waits for the GIL twice: tens of iterations, not thousands.
        assert run(loop, main()) < 500 * rounds
    finally:
        a.close()
        b.close()


def test_probing_for_nest_asyncio_finds_it_absent(wloop):
    # Code asking whether nest_asyncio patched the loop gets "no", as on other loops;
    # only nest_asyncio itself is refused.
    assert getattr(wloop, "_nest_patched", False) is False
    assert not hasattr(wloop, "_nest_patched")
    assert "_nest_patched" not in dict(inspect.getmembers(wloop))


def test_nest_asyncio_is_refused_and_leaves_weaveloop_working():
    # nest_asyncio.apply() would rewrite the loop class's run loop in Python; weaveloop
    # refuses it as uvloop is refused, and the class stays usable. In a child process:
    # apply() patches the asyncio module for good.
    script = textwrap.dedent(
        """
        import asyncio, nest_asyncio, weaveloop
        loop = weaveloop.new_event_loop()
        try:
            nest_asyncio.apply(loop)
        except ValueError as e:
            print("refused:", e)
        loop.close()
        fresh = weaveloop.new_event_loop()
        print("fresh loop:", fresh.run_until_complete(asyncio.sleep(0, "ran")))
        fresh.close()
        """
    )
    out = run_python(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "refused: Can't patch loop of type <class 'weaveloop._loop.Loop'>",
        "fresh loop: ran",
    ]


_EXIT_SCRIPT = """
import asyncio, sys, threading, time
import weaveloop

where = sys.argv[1]
loop = weaveloop.new_event_loop()
running = threading.Event()

def lets_go_of_the_gil():
    running.set()
    for _ in range(100):
        time.sleep(0)

def callback():
    lets_go_of_the_gil()
    loop.call_soon(callback)

def failing():
    loop.call_soon(failing)
    raise ValueError("reported to the handler")

class Dropped:
    def __call__(self):
        loop.call_soon(Dropped())

    def __del__(self):
        lets_go_of_the_gil()

if where == "callback":
    loop.call_soon(callback)
elif where == "dropped callable":
    loop.call_soon(Dropped())
else:
    loop.set_exception_handler(lambda lp, context: lets_go_of_the_gil())
    loop.call_soon(failing)
threading.Thread(target=loop.run_forever, daemon=True).start()
running.wait(30)
print("main thread ends")
"""


@pytest.mark.parametrize("where", ["callback", "handler", "dropped callable"])
def test_interpreter_exit_while_a_daemon_thread_runs_the_loop(where):
    # The main thread ends while the loop thread runs Python code that lets go of the GIL.
    # CPython (< 3.14) ends a thread taking the GIL back during finalization with
    # pthread_exit; the process must still exit normally, as with the stock loop (before,
    # the forced unwind through the loop's Rust frames aborted or crashed it).
    for _ in range(3):
        out = run_python(_EXIT_SCRIPT, where)
        assert (out.returncode, out.stdout) == (0, "main thread ends\n"), out.stderr


_CXX_SCRIPT = """
import asyncio, ctypes, sys
import weaveloop

throw = ctypes.PyDLL("libstdc++.so.6")._ZSt21__throw_runtime_errorPKc
throw.argtypes = [ctypes.c_char_p]
new_loop = weaveloop.new_event_loop if sys.argv[1] == "weaveloop" else asyncio.new_event_loop
loop = new_loop()
if sys.argv[2] == "callback":
    loop.call_soon(throw, b"thrown through the loop")
    loop.run_forever()
else:
    loop.run_until_complete(loop.run_in_executor(None, throw, b"thrown through a job"))
"""


@pytest.mark.parametrize("where", ["callback", "executor job"])
@pytest.mark.parametrize("loop_kind", ["stock", "weaveloop"])
def test_a_cxx_exception_through_a_callback_aborts_as_on_the_stock_loop(loop_kind, where):
    # Outside interpreter exit, the exit guard of the loop's calls lets a foreign unwind
    # go on: the process aborts, as with the stock loop, rather than freezing with the
    # GIL held.
    out = run_python(_CXX_SCRIPT, loop_kind, where)
    assert out.returncode == -signal.SIGABRT, out.stderr


def test_a_vendored_nest_asyncio_is_refused_too(wloop):
    # Forks and copies of nest_asyncio keep its `_patch_loop`, whose first look at the
    # loop is this one.
    def _patch_loop(loop):
        if hasattr(loop, "_nest_patched"):
            return

    with pytest.raises(ValueError, match="Can't patch loop of type"):
        _patch_loop(wloop)


def test_a_nested_run_once_runs_what_is_queued_behind_its_callback(wloop):
    # weaveloop-only (`_run_once` is private; some code steps a loop with it from inside
    # a callback): an iteration takes its whole batch at once, and one run from a
    # callback of it runs what the outer one has not run yet, first, as the stock loop's
    # nested iteration finds it at the head of its queue. Before, it found nothing ready
    # and blocked in the poller for good. (The stock loop's outer iteration then fails
    # on its emptied queue with IndexError; this one has nothing left and ends.)
    ran = []

    def nested():
        ran.append("outer callback")
        wloop.call_soon(ran.append, "scheduled by it")
        wloop._run_once()
        ran.append("back in the outer callback")

    wloop.call_later(SAFETY, wloop.stop)  # (a safety net: it ends such a block)
    wloop.call_soon(nested)
    wloop.call_soon(ran.append, "queued behind")
    wloop.call_soon(wloop.stop)
    wloop.run_forever()
    assert ran == [
        "outer callback",
        "queued behind",
        "scheduled by it",
        "back in the outer callback",
    ]


def test_a_callback_may_step_the_loop_until_a_timer_fires(loop):
    # As on the stock loop: a nested iteration waits for the timer as any iteration does.
    ran = []

    def step_until_fired():
        fired = loop.create_future()
        loop.call_later(0.001, fired.set_result, "timer fired")
        while not fired.done():
            loop._run_once()
        ran.append(fired.result())
        loop.stop()

    loop.call_later(SAFETY, loop.stop)  # (a safety net, should the stepping fail)
    loop.call_soon(step_until_fired)
    loop.run_forever()
    assert ran == ["timer fired"]


def test_a_subclass_may_have_its_own_closing_attribute(wloop):
    # The loop's own flags keep out of the names subclasses use (`_closing` is common).
    import weaveloop

    class Mine(weaveloop.Loop):
        def __init__(self):
            super().__init__()
            self._closing = "mine"

    lp = Mine()
    try:
        assert lp._closing == "mine"
        assert lp.run_until_complete(asyncio.sleep(0, "ok")) == "ok"
    finally:
        lp.close()


def test_a_callback_sees_the_rest_of_its_iteration_in_ready(loop):
    # As in the stock loop's queue, which an iteration takes from one by one: what the
    # running iteration has not run yet is listed first.
    seen = []
    loop.call_soon(lambda: seen.append(len(loop._ready)))
    loop.call_soon(lambda: None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [2]


def test_an_iteration_goes_on_with_what_a_nested_one_left_ready(loop):
    # As the stock loop's, which pops its queue as many times as it had entries: what a
    # nested iteration's callbacks scheduled runs in the outer iteration, before a
    # stop() that outer one made takes effect.
    log = []

    def scheduling():
        log.append("scheduling")
        loop.call_soon(log.append, "scheduled")

    def nesting():
        log.append("nesting")
        loop._run_once()
        log.append("back")
        loop.stop()

    loop.call_later(SAFETY, loop.stop)  # (a safety net, should the stepping fail)
    loop.call_soon(nesting)
    loop.call_soon(scheduling)
    loop.run_forever()
    assert log == ["nesting", "scheduling", "back", "scheduled"]


def test_close_from_a_callback_of_a_hand_run_iteration_drops_its_rest(wloop):
    # weaveloop-only (the stock loop's iteration then fails on its emptied queue with
    # IndexError): close() drops what the iteration has not run yet, with the rest of the
    # queue, instead of leaving it to run on the closed loop.
    ran = []
    wloop.call_soon(wloop.close)
    wloop.call_soon(ran.append, "after close")
    wloop._run_once()
    assert wloop.is_closed() and ran == []


def test_nested_iterations_end_in_recursion_error_not_a_crash(wloop):
    # weaveloop-only: each nested _run_once() holds native frames; a depth cap raises
    # RecursionError long before a raised recursion limit would let the C stack overflow.
    depths = []

    def deeper(depth):
        wloop.call_soon(deeper, depth + 1)
        try:
            wloop._run_once()
        except RecursionError as e:
            depths.append((depth, str(e)))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        wloop.call_soon(deeper, 1)
        wloop._run_once()
    finally:
        sys.setrecursionlimit(limit)
    assert depths == [(200, "maximum recursion depth exceeded in nested _run_once()")]


_FORK_DURING_CLOSE = r"""
import os, sys, threading
import weaveloop

loop = weaveloop.new_event_loop()
entered, release = threading.Event(), threading.Event()

def posted():  # run by close(), in the closing thread
    entered.set()
    release.wait(30)

poster = threading.Thread(target=loop.call_soon_threadsafe, args=(posted,))
poster.start()
poster.join()
closer = threading.Thread(target=loop.close)
closer.start()
assert entered.wait(30)
pid = os.fork()
if pid == 0:
    # Another thread of the parent was closing the loop: here it is closed, and says so.
    code = 0 if loop.is_closed() else 1
    try:
        loop.run_until_complete(None)
        code = 2
    except RuntimeError as e:
        code = code or (0 if "closed" in str(e) else 3)
    loop.close()
    os._exit(code)
_, status = os.waitpid(pid, 0)
release.set()
closer.join()
print("child exit", os.waitstatus_to_exitcode(status))
"""


def test_a_fork_while_another_thread_closes_the_loop_leaves_it_closed_in_the_child():
    # weaveloop-only: close() runs other threads' posts before it marks the loop closed;
    # a child forked meanwhile by another thread cannot finish that close (its first,
    # Python half has closed the self-pipe), and finds the loop closed rather than a
    # half-closed loop that says it is open.
    assert_fork_script_passes(_FORK_DURING_CLOSE, "weaveloop")
