"""Signals: Ctrl+C interrupts a parked loop promptly, add/remove_signal_handler.

Differential: every test runs on weaveloop and on the stock loop. A helper thread sends
SIGINT once the loop thread is *parked in the poller* (read from /proc, so no sleeps);
a safety timer stops the loop if the signal is never noticed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest
from _support import (
    SAFETY,
    join_or_fail,
    needs_parked_detection,
    run,
    start_thread,
    wait_or_fail,
    wait_until_parked,
)


@pytest.fixture(autouse=True)
def _default_sigint_handler():
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _send_sigint(how: str) -> None:
    if how == "pthread_kill":
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
    else:
        os.kill(os.getpid(), signal.SIGINT)


def _interrupt_when_parked(loop, how: str, running: threading.Event) -> threading.Thread:
    """Send SIGINT from a helper thread once the main thread is parked in the poller.

    Parked matters: the stock loop only notices a signal that interrupts its poll, so a
    signal sent a moment earlier could be missed by either loop for a reason unrelated
    to what is tested here.
    """
    main_id = threading.main_thread().native_id

    def helper():
        wait_or_fail(running, "the loop to run")
        try:
            wait_until_parked(main_id)
        finally:
            _send_sigint(how)

    return start_thread(helper)


def _run_until_interrupted(loop, how: str) -> None:
    """Runs `loop` until a SIGINT, sent (`how`) from a helper thread once the loop runs,
    comes out of it as KeyboardInterrupt; fails if the safety timer stopped it first."""
    running = threading.Event()

    def helper():
        wait_or_fail(running, "the loop to run")
        _send_sigint(how)

    loop.call_soon(running.set)
    guard = loop.call_later(SAFETY, loop.stop)  # safety net only
    t = start_thread(helper)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    join_or_fail(t)
    assert guard.when() > loop.time(), "the safety timer fired: SIGINT was not noticed"
    guard.cancel()


@needs_parked_detection
@pytest.mark.parametrize("how", ["pthread_kill", "os_kill"])
def test_sigint_interrupts_a_parked_run_forever(loop, how):
    running = threading.Event()
    loop.call_soon(running.set)
    guard = loop.call_later(SAFETY, loop.stop)  # safety net only
    helper = _interrupt_when_parked(loop, how, running)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    join_or_fail(helper)
    assert guard.when() > loop.time(), "the safety timer fired: SIGINT was not noticed"
    guard.cancel()
    assert not loop.is_running()
    # The loop is usable afterwards.
    assert run(loop, asyncio.sleep(0.001, "usable")) == "usable"
    loop.call_soon(loop.stop)
    loop.run_forever()


@needs_parked_detection
@pytest.mark.parametrize("how", ["pthread_kill", "os_kill"])
def test_sigint_interrupts_a_long_sleep(loop, how):
    running = threading.Event()

    async def main():
        running.set()
        await asyncio.sleep(3600)

    task = loop.create_task(main())
    helper = _interrupt_when_parked(loop, how, running)
    guard = loop.call_later(SAFETY, task.cancel)  # safety net only
    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(task)
    join_or_fail(helper)
    guard.cancel()
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(task)
    assert run(loop, asyncio.sleep(0, "usable")) == "usable"


@needs_parked_detection
def test_sigint_interrupts_a_loop_waiting_on_an_executor_job(loop):
    release = threading.Event()
    running = threading.Event()

    async def main():
        running.set()
        await loop.run_in_executor(None, release.wait, SAFETY)

    task = loop.create_task(main())
    helper = _interrupt_when_parked(loop, "pthread_kill", running)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(task)
    finally:
        release.set()
    join_or_fail(helper)
    assert run(loop, task) is None


@needs_parked_detection
def test_runner_turns_sigint_into_task_cancellation(loop_factory):
    # asyncio.Runner (and so weaveloop.run) cancels the main task on the first Ctrl+C.
    running = threading.Event()
    saw_cancel = []

    async def main():
        running.set()
        try:
            await asyncio.sleep(SAFETY)
        except asyncio.CancelledError:
            saw_cancel.append(True)
            raise

    helper = _interrupt_when_parked(None, "pthread_kill", running)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        with pytest.raises(KeyboardInterrupt):
            runner.run(main())
    join_or_fail(helper)
    assert saw_cancel == [True]


def test_add_signal_handler_runs_on_the_loop(loop):
    got = []

    def handler(tag):
        got.append((tag, threading.current_thread() is threading.main_thread()))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, "usr1")
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        guard = loop.call_later(SAFETY, loop.stop)
        loop.run_forever()
        guard.cancel()
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert got == [("usr1", True)]
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def test_signal_handler_from_another_thread_wakes_the_loop(loop):
    got = []

    def handler():
        got.append("usr2")
        loop.stop()

    running = threading.Event()
    loop.add_signal_handler(signal.SIGUSR2, handler)
    try:
        loop.call_soon(running.set)

        def helper():
            wait_or_fail(running, "the loop to run")
            os.kill(os.getpid(), signal.SIGUSR2)

        t = start_thread(helper)
        guard = loop.call_later(SAFETY, loop.stop)
        loop.run_forever()
        guard.cancel()
        join_or_fail(t)
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)
    assert got == ["usr2"]


def test_add_signal_handler_bad_input(loop):
    async def coro_handler():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro_handler)
    with pytest.raises(ValueError):
        loop.add_signal_handler(0x10000, lambda: None)
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGKILL, lambda: None)


def test_add_signal_handler_refuses_a_non_callable(wloop):
    # The stock loop accepts it and fails only when the signal arrives.
    with pytest.raises(TypeError, match=r"by add_signal_handler\(\), got 5"):
        wloop.add_signal_handler(signal.SIGUSR1, 5)
    assert wloop.remove_signal_handler(signal.SIGUSR1) is False
    # The stock checks still come first: a coroutine object, a bad signal, a closed loop.
    coro = asyncio.sleep(0)
    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        wloop.add_signal_handler(signal.SIGUSR1, coro)
    coro.close()
    with pytest.raises(ValueError):
        wloop.add_signal_handler(0x10000, 5)
    wloop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed"):
        wloop.add_signal_handler(signal.SIGUSR1, 5)


def test_add_signal_handler_outside_the_main_thread_raises(loop_factory):
    errors = []

    def worker():
        lp = loop_factory()
        try:
            lp.add_signal_handler(signal.SIGUSR1, lambda: None)
        except RuntimeError as e:
            errors.append(e)
        finally:
            lp.close()

    join_or_fail(start_thread(worker))
    assert len(errors) == 1


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


@pytest.mark.parametrize("how", ["pthread_kill", "os_kill"])
def test_sigint_just_before_the_park_is_not_missed(wloop, how):
    # weaveloop-only: the stock loop has no wake-up fd outside add_signal_handler, so a
    # SIGINT landing between its last signal check and epoll_wait goes unnoticed until
    # something else wakes it. weaveloop wakes on the signal in every case.
    _run_until_interrupted(wloop, how)
    assert run(wloop, asyncio.sleep(0, "usable")) == "usable"


def test_a_wakeup_fd_installed_during_a_run_survives_it(loop):
    # Code that installs its own signal wake-up fd while the loop runs keeps it after.
    import socket

    r, w = socket.socketpair()
    w.setblocking(False)
    try:

        def install():
            signal.set_wakeup_fd(w.fileno())
            loop.stop()

        loop.call_soon(install)
        loop.run_forever()
        assert signal.set_wakeup_fd(-1) == w.fileno()
    finally:
        signal.set_wakeup_fd(-1)
        r.close()
        w.close()


def test_removing_the_last_signal_handler_keeps_the_runs_wakeup_fd(wloop):
    # weaveloop-only: during a run it keeps a signal wake-up fd (so that Ctrl+C wakes a
    # parked loop); the stock remove_signal_handler uninstalls it with the last handler.
    def peek() -> int:
        fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(fd)
        return fd

    async def main():
        wloop.add_signal_handler(signal.SIGUSR1, lambda: None)
        assert wloop.remove_signal_handler(signal.SIGUSR1)
        return peek()

    assert run(wloop, main()) == wloop._csock.fileno()
    assert peek() == -1, "restored once the run ends"


def _full_socketpair():
    """A non-blocking socket pair whose sending side cannot take another byte."""
    import socket

    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        while True:
            a.send(b"\0" * 4096)
    except BlockingIOError:
        pass
    return a, b


def _unraisable_reports_of_a_signal(sig) -> list:
    """What CPython reports as unraisable when `sig` arrives here (a failed write to the
    wake-up fd is reported so, from the main thread once the signal is handled)."""
    import sys

    reports = []
    handled = threading.Event()
    old_hook = sys.unraisablehook
    old_handler = signal.signal(sig, lambda *_: handled.set())
    sys.unraisablehook = lambda u: reports.append(u.err_msg)
    try:
        os.kill(os.getpid(), sig)
        wait_or_fail(handled, "the signal to be handled")
        # (The report is a pending call, made in the same pass as the handler.)
        os.getpid()
    finally:
        sys.unraisablehook = old_hook
        signal.signal(sig, old_handler)
    return reports


def test_a_foreign_wakeup_fd_keeps_its_warn_on_full_buffer_false_through_a_run(loop):
    # trio installs its wake-up fd with warn_on_full_buffer=False and lets it fill up.
    # The loop looks at the wake-up fd as it starts and ends a run (CPython can only
    # tell what it is by replacing it); what it puts back must not start warning.
    a, b = _full_socketpair()
    try:
        signal.set_wakeup_fd(a.fileno(), warn_on_full_buffer=True)
        warned = _unraisable_reports_of_a_signal(signal.SIGUSR1)
        assert len(warned) == 1, "the control: a full fd that warns is reported"
        signal.set_wakeup_fd(a.fileno(), warn_on_full_buffer=False)
        assert run(loop, asyncio.sleep(0, "ran")) == "ran"
        assert _unraisable_reports_of_a_signal(signal.SIGUSR1) == []
        assert signal.set_wakeup_fd(-1) == a.fileno()
    finally:
        signal.set_wakeup_fd(-1)
        a.close()
        b.close()


def test_a_stale_foreign_wakeup_fd_does_not_fail_a_run_or_leave_the_loops_own(loop):
    # A wake-up fd made blocking after it was installed: CPython refuses to install it
    # again, which the loop's look at it must survive, without leaving its own socket
    # (closed with the loop) as the process's wake-up fd.
    import socket

    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        signal.set_wakeup_fd(a.fileno())
        a.setblocking(True)
        assert run(loop, asyncio.sleep(0, "ran")) == "ran"
        assert signal.set_wakeup_fd(-1) in (-1, a.fileno())
    finally:
        signal.set_wakeup_fd(-1)
        a.close()
        b.close()


def test_close_from_another_thread_closes_a_loop_with_signal_handlers(loop):
    # The stock loop closes, then removes its handlers, which fails from a thread other
    # than the main one (signal.signal): the loop is closed all the same.
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    errors = []

    def close():
        try:
            loop.close()
        except ValueError as e:
            errors.append(e)

    join_or_fail(start_thread(close))
    assert len(errors) == 1 and "main thread" in str(errors[0])
    assert loop.is_closed()
    loop.close()  # closed: a no-op
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def test_ctrl_c_interrupts_callbacks_that_run_no_python_code(loop):
    # A C callable that reschedules itself keeps the loop busy without running a line
    # of Python, and someone else's wake-up fd means no signal byte reaches the loop's
    # own socket: the pending SIGINT must still be noticed, as the stock loop's Python
    # code notices it between two callbacks.
    import functools

    a, b = _full_socketpair()
    try:
        signal.set_wakeup_fd(a.fileno(), warn_on_full_buffer=False)
        again = functools.partial(loop.call_soon, None)
        again.__setstate__((loop.call_soon, (again,), {}, None))
        loop.call_soon(again)
        _run_until_interrupted(loop, "os_kill")
    finally:
        signal.set_wakeup_fd(-1)
        a.close()
        b.close()


def test_what_close_runs_cannot_reopen_the_number_of_the_signal_wakeup_fd(wloop, tmp_path):
    # weaveloop-only (the stock close() drops what other threads posted; weaveloop's
    # runs it): while a loop with signal handlers closes, its self-pipe is the process's
    # signal wake-up fd. A file the posted code opens must not get that number, or a
    # signal's byte lands in the file.
    wloop.add_signal_handler(signal.SIGUSR1, lambda: None)
    wakeup_fd = wloop._csock.fileno()
    opened = []

    def posted():
        # (Numbers are handed out lowest first: opening up to 64 files reaches the
        # wake-up fd's number if it is free.)
        for i in range(64):
            opened.append(open(tmp_path / f"f{i}", "wb"))  # noqa: SIM115 -- closed below
            if opened[-1].fileno() == wakeup_fd:
                break
        os.kill(os.getpid(), signal.SIGUSR1)

    join_or_fail(start_thread(wloop.call_soon_threadsafe, posted))
    try:
        wloop.close()
    finally:
        for f in opened:
            f.close()
    assert opened, "the posted callback ran"
    assert [p.read_bytes() for p in sorted(tmp_path.iterdir())] == [b""] * len(opened)
