"""Helpers shared by the test files: loop factories, safety-netted waits, thread starts.

Every timeout here is a safety net: reaching one means the test failed, never that it
passed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import platform
import threading
import time

import pytest

#: Upper bound for any single wait in a test: reaching it means the test failed.
SAFETY = 10.0

LOOP_KINDS = ["weaveloop", "asyncio"]


def stdlib_default_workers() -> int:
    """concurrent.futures' default pool size on this Python (3.13 counts the CPUs this
    process may use)."""
    cpus = getattr(os, "process_cpu_count", os.cpu_count)()
    return min(32, (cpus or 1) + 4)


def weaveloop_factory(**options):
    import weaveloop

    return weaveloop.new_event_loop(**options)


def asyncio_factory():
    return asyncio.SelectorEventLoop()


FACTORIES = {"weaveloop": weaveloop_factory, "asyncio": asyncio_factory}


def run(loop, coro, timeout: float = SAFETY):
    """run_until_complete with a safety timeout, so a broken loop fails instead of hangs."""

    async def guarded():
        return await asyncio.wait_for(coro, timeout)

    return loop.run_until_complete(guarded())


def start_thread(target, *args, name=None) -> threading.Thread:
    t = threading.Thread(target=target, args=args, name=name, daemon=True)
    t.start()
    return t


def wait_or_fail(event: threading.Event, what: str, timeout: float = SAFETY) -> None:
    if not event.wait(timeout):
        pytest.fail(f"timed out (safety net) waiting for {what}")


def join_or_fail(thread: threading.Thread, timeout: float = SAFETY) -> None:
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"thread {thread.name} did not finish (safety net)")


class LoopThread:
    """Runs ``loop.run_forever()`` in a worker thread; ``stop()`` stops it and joins."""

    def __init__(self, loop) -> None:
        self.loop = loop
        self.running = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="loop-thread", daemon=True)

    def _main(self) -> None:
        self.loop.call_soon(self.running.set)
        try:
            self.loop.run_forever()
        except BaseException as e:  # noqa: BLE001 - re-raised in stop()
            self.error = e

    def start(self) -> LoopThread:
        self.thread.start()
        wait_or_fail(self.running, "the loop thread to start")
        return self

    def stop(self) -> None:
        if self.thread.is_alive() and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        join_or_fail(self.thread)
        if self.error is not None:
            raise self.error


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


class SettlingPause:
    """A done callback that holds the worker thread settling its future on an idle
    weaveloop loop's behalf: in debug mode the loop asks a scheduled callback whether it
    is a coroutine function (an attribute lookup), which, on a thread other than the
    main one, sets ``in_settle`` and waits (the GIL released) for ``resume``."""

    def __init__(self) -> None:
        self.in_settle, self.resume = threading.Event(), threading.Event()

    def __call__(self, fut) -> None:
        pass

    def __getattr__(self, name):
        if threading.current_thread() is not threading.main_thread():
            self.in_settle.set()
            self.resume.wait(SAFETY)
        raise AttributeError(name)


class InlineExecutor(concurrent.futures.Executor):
    """A foreign Executor: runs jobs inline, to exercise the generic path."""

    def submit(self, fn, /, *args, **kwargs):
        f = concurrent.futures.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - forwarded to the future
            f.set_exception(e)
        return f


def run_python(code: str, *args: str, timeout: float = SAFETY, env=None):
    """Runs ``code`` in a fresh interpreter (``python -c code *args``); its completed
    process, output captured as text."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def reap_child(pid: int, timeout: float = 10) -> str:
    """For fork scripts: waits for child ``pid``; ``child exit <code>``, or ``child hung``
    once it is killed after ``timeout`` (a safety net: a child hung inside ``os.fork()``
    never sets an alarm of its own, and alarms are not inherited)."""
    import signal

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return f"child exit {os.waitstatus_to_exitcode(status)}"
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "child hung"


def assert_fork_script_passes(script: str, loop_kind: str, quiet: bool = False) -> None:
    """Runs ``script`` (which forks and prints ``child exit <code>``) in a fresh
    interpreter with ``loop_kind`` as its argument and this module importable; the
    child must have exited 0 (and, if ``quiet``, nothing may be printed to stderr)."""
    import os

    env = dict(os.environ)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    # Python 3.12+ warns on every fork() of a process with threads, which these make.
    env["PYTHONWARNINGS"] = "ignore:This process:DeprecationWarning"
    out = run_python(script, loop_kind, timeout=90, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "child exit 0", out.stderr
    if quiet:
        assert out.stderr == ""


# Syscalls a loop parks in (epoll_wait, epoll_pwait, epoll_pwait2, poll, ppoll, select, ...).
POLL_SYSCALLS = {
    "x86_64": {7, 23, 232, 270, 271, 281, 441},
    "aarch64": {22, 72, 73, 441},
}


# Only the tests that wait for the loop thread to park need this.
needs_parked_detection = pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() not in POLL_SYSCALLS,
    reason="parked-state detection reads /proc/self/task/*/syscall (Linux x86_64/aarch64)",
)


def parked_in_poller(native_id: int) -> bool:
    with open(f"/proc/self/task/{native_id}/syscall") as f:
        first = f.read().split()[0]
    return first != "running" and int(first) in POLL_SYSCALLS[platform.machine()]


def wait_until_parked(native_id: int) -> None:
    """Returns once the thread ``native_id`` is blocked in a poll syscall."""
    deadline = time.monotonic() + SAFETY
    while not parked_in_poller(native_id):
        if time.monotonic() > deadline:
            raise AssertionError("the loop thread never parked in the poller (safety net)")
        time.sleep(0.0005)  # poll interval of a condition check, not a synchronisation
