"""Conformance runner: CPython's installed ``test.test_asyncio`` against weaveloop.

Runs the loop-agnostic mixins of ``test_events`` (``EventLoopTestsMixin``,
``UnixEventLoopTestsMixin``, ``SubprocessTestsMixin``), the public-API modules
(``test_futures``, ``test_tasks``, ``test_locks``, ...) and the I/O modules
(``test_sock_lowlevel``, ``test_subprocess``, ``test_ssl``, ...; see ``UNITS`` and
``EXCLUDED_CLASSES``), and three modules from outside ``test.test_asyncio`` whose tests
run loops (``OUTSIDE_UNITS``: async generators' loop hooks, async context managers,
``IsolatedAsyncioTestCase``) with weaveloop as the loop they create, each module in its own
subprocess with a wall-clock timeout, and compares the outcome with
``expectations.txt`` next to this file.

How weaveloop is plugged in:

* the ``test_events`` mixins are combined into a ``TestCase`` whose
  ``create_event_loop`` returns ``weaveloop.new_event_loop()``;
* for the modules, ``asyncio.DefaultEventLoopPolicy`` (and the aliases in
  ``asyncio.events``/``asyncio.unix_events``) is replaced by
  ``weaveloop.EventLoopPolicy`` and the global policy is reset, so
  ``asyncio.new_event_loop()``, ``asyncio.run()``, ``asyncio.Runner`` and
  ``IsolatedAsyncioTestCase`` make weaveloop loops, even after a module's
  ``tearDownModule`` calls ``asyncio.set_event_loop_policy(None)``.
* in the I/O modules that build ``asyncio.SelectorEventLoop(selector)`` themselves
  (``SELECTOR_LOOP_UNITS``), that name is a weaveloop factory ignoring the selector.

Tests that build their own deterministic ``test_utils.TestLoop`` keep it. To prove
weaveloop was really used, ``weaveloop.Loop.__init__`` is wrapped: the runner prints
how many weaveloop loops each module created and in how many tests, and fails if a
module created none.

Each test gets a SIGALRM-based safety timeout (raises inside the test) backed by a
faulthandler hard exit; a crashed or hung test is recorded and the module is restarted
after it, so a crash or hang costs one test, not the run.

Expectations: one line per test that does not pass::

    test_tasks.CTask_CFuture_Tests.test_foo fail  # one-line reason
    test_events.EventLoopTests.test_bar     skip  # hangs: why

``fail`` = runs and is expected to fail; ``skip`` = not run (hangs or crashes the
process). A reason starting with ``env:`` means the stock loop fails it too on this
machine; only those entries apply to ``--loop asyncio``.

Usage::

    python tests/conformance/run.py [--loop weaveloop|asyncio] [--only MODULE ...]
                                    [--update-expectations] [-v] [-j N]

Exit status 1 on an unexpected failure (a "now passing" test does not fail the run).
The last line is ``conformance: N passed, N failed``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EXPECTATIONS = HERE / "expectations.txt"
LOG_ROOT = ROOT / "target" / "conformance"
PKG = "test.test_asyncio."

#: The units run, in order; "test_events" is the mixin selection, the others whole modules.
UNITS = [
    "test_events",
    "test_futures",
    "test_futures2",
    "test_tasks",
    "test_locks",
    "test_queues",
    "test_timeouts",
    "test_taskgroups",
    "test_runners",
    "test_threads",
    "test_context",
    "test_pep492",
    "test_waitfor",
    "test_streams",
    # The I/O modules: sockets, subprocesses, servers, sendfile, TLS, unix specifics.
    # (test_proactor_events, test_windows_events and test_windows_utils are Windows-only;
    # test_selector_events unit-tests the stock selector loop's internals.)
    "test_sock_lowlevel",
    "test_subprocess",
    "test_server",
    "test_sendfile",
    "test_ssl",
    "test_sslproto",
    "test_unix_events",
    "test_buffered_proto",
    "test_protocols",
    # Mostly public behaviour through asyncio.SelectorEventLoop (a weaveloop loop here);
    # its tests of BaseEventLoop internals build stock BaseEventLoop() objects themselves.
    "test_base_events",
    # (test_transports is not run: it checks the transport base classes against mock
    # loops and would create no loop at all.)
]

#: Modules that only newer Pythons ship: run where the interpreter has them.
NEWER_UNITS = {
    "test_eager_task_factory": (3, 12),
    "test_staggered": (3, 13),
}
UNITS += [u for u, since in NEWER_UNITS.items() if sys.version_info >= since]

#: Units from outside test.test_asyncio whose tests run loops: async generators and
#: their loop hooks, async context managers, IsolatedAsyncioTestCase. By unit name, the
#: module's full name (test ids are reported under the unit name).
OUTSIDE_UNITS = {
    "test_asyncgen": "test.test_asyncgen",
    "test_contextlib_async": "test.test_contextlib_async",
    "test_async_case": (
        "unittest.test.test_async_case"
        if sys.version_info < (3, 12)
        else "test.test_unittest.test_async_case"
    ),
}
UNITS += list(OUTSIDE_UNITS)


def _module_name(unit: str) -> str:
    return OUTSIDE_UNITS.get(unit, PKG + unit)


#: Units that need not create a loop of the loop under test: test_protocols only checks
#: that the protocol ABCs' methods are no-ops.
NO_LOOP_UNITS: set[str] = {"test_protocols"}

#: Units that build loops with ``asyncio.SelectorEventLoop(selector)``; on weaveloop that
#: name becomes a factory of the loop under test that ignores (closes) the selector —
#: none of their tests use the selector object itself. See _substitute_selector_loop.
SELECTOR_LOOP_UNITS = {
    "test_base_events",
    "test_sock_lowlevel",
    "test_sendfile",
    "test_server",
    "test_sslproto",
    "test_unix_events",
    "test_buffered_proto",
}

#: Test classes left out of a unit (both loops), with why. Classes that need another
#: platform (Proactor, Windows, kqueue) are skipped by unittest itself and not listed.
# The same tests once per selector; the selector is ignored on weaveloop, so running
# them under PollSelector and SelectSelector too would only repeat EPollEventLoopTests.
_PER_SELECTOR_REPEATS = {
    "PollEventLoopTests": "repeats EPollEventLoopTests (selector ignored)",
    "SelectEventLoopTests": "repeats EPollEventLoopTests (selector ignored)",
}
EXCLUDED_CLASSES: dict[str, dict[str, str]] = {
    "test_sock_lowlevel": _PER_SELECTOR_REPEATS,
    "test_sendfile": _PER_SELECTOR_REPEATS,
    "test_unix_events": {
        # Drive the stock loop's signal plumbing (_check_signal, _handle_signal,
        # _signal_handlers) with ``asyncio.unix_events.signal`` mocked out: a unit test
        # of _UnixSelectorEventLoop's private code, which weaveloop inherits unchanged.
        # Real signal handling is covered by test_events' UnixEventLoopTestsMixin.
        # (Run anyway, 15/16 pass; test_close_on_finalizing patches
        # ``asyncio.unix_events.sys``, which weaveloop's own close() does not read.)
        "SelectorEventLoopSignalTests": "stock loop's private signal code, signal mocked",
        # Unit tests of the stock pipe transports on a deterministic TestLoop with a fake
        # fd 5 and os.read/os.write mocked; they assert TestLoop bookkeeping
        # (assert_reader/assert_writer), not loop behaviour — which _substitute_loops'
        # real loop does not have, on either loop.
        "UnixReadPipeTransportTests": "stock transport internals on a mocked TestLoop",
        "UnixWritePipeTransportTests": "stock transport internals on a mocked TestLoop",
        # Unit tests of the child watchers with os.waitpid and add_signal_handler mocked;
        # the loop is only a TestLoop holder for the mocks.
        "SafeChildWatcherTests": "child watcher internals, waitpid/signals mocked",
        "FastChildWatcherTests": "child watcher internals, waitpid/signals mocked",
        "AbstractChildWatcherTests": "ABC of the child watchers, no loop",
        "BaseChildWatcherTests": "ABC of the child watchers, no loop",
    },
}

#: Units whose tests build a bare mocked ``asyncio.BaseEventLoop()``; see _substitute_bare_loop.
BARE_LOOP_UNITS = {"test_runners", "test_pep492"}

MIXIN_CLASS = "EventLoopTests"
ENV_PREFIX = "env:"
TODO_REASON = "TODO reason"

# Outcome statuses of one test.
PASS, FAIL, SKIPPED, CRASH, HANG, NOTRUN, XSKIP = (
    "pass",
    "fail",
    "skipped",  # skipped by unittest itself (platform, resource): not counted
    "crash",
    "hang",
    "notrun",  # never started (fixture error, module killed)
    "xskip",  # not run because expectations say skip
)


# --------------------------------------------------------------------------- child


class TestTimeout(SystemExit):
    """Raised by the per-test alarm.

    A ``SystemExit`` so asyncio lets it out of callbacks and tasks (it only re-raises
    ``SystemExit``/``KeyboardInterrupt``), while unittest records it as the test's error.
    """


def _short_id(test_id: str) -> str:
    if test_id.startswith(PKG):
        return test_id[len(PKG) :]
    for unit, module in OUTSIDE_UNITS.items():
        if test_id.startswith(module + "."):
            return unit + test_id[len(module) :]
    return test_id


def _fixture_id(description: str) -> str:
    # unittest's _ErrorHolder: "setUpClass (test.test_asyncio.test_x.Cls)".
    m = re.match(r"(\w+) \((.*)\)$", description)
    if not m:
        return _short_id(description)
    return f"{_short_id(m.group(2))}.{m.group(1)}"


def _install_loop(kind: str) -> dict:
    """Make ``kind`` the loop that asyncio creates; return the live loop counters."""
    import asyncio
    import asyncio.events
    import asyncio.selector_events
    import asyncio.unix_events

    counters = {"loops": 0, "stock": 0, "kind": kind}
    stock_init = asyncio.selector_events.BaseSelectorEventLoop.__init__

    if kind == "weaveloop":
        import weaveloop

        loop_cls = weaveloop.Loop
        loop_init = loop_cls.__init__

        def counting_init(self, *args, **kwargs):
            counters["loops"] += 1
            loop_init(self, *args, **kwargs)

        loop_cls.__init__ = counting_init

        def stock_counting_init(self, *args, **kwargs):
            if not isinstance(self, loop_cls):
                counters["stock"] += 1
            stock_init(self, *args, **kwargs)

        asyncio.selector_events.BaseSelectorEventLoop.__init__ = stock_counting_init

        policy = weaveloop.EventLoopPolicy
        asyncio.DefaultEventLoopPolicy = policy
        asyncio.events.DefaultEventLoopPolicy = policy
        asyncio.unix_events.DefaultEventLoopPolicy = policy
        counters["factory"] = weaveloop.new_event_loop
    else:

        def counting_init(self, *args, **kwargs):
            counters["loops"] += 1
            stock_init(self, *args, **kwargs)

        loop_cls = asyncio.selector_events.BaseSelectorEventLoop
        loop_cls.__init__ = counting_init
        counters["factory"] = asyncio.SelectorEventLoop

    asyncio.set_event_loop_policy(None)
    # Sanity check: the public entry points now make loops of the loop under test.
    probe = asyncio.new_event_loop()
    try:
        if not isinstance(probe, loop_cls):
            raise SystemExit(f"asyncio.new_event_loop() made {type(probe)!r}, not {loop_cls!r}")
    finally:
        probe.close()
    asyncio.set_event_loop_policy(None)
    counters["loops"] = counters["stock"] = 0
    return counters


def _build_suite(unit: str, counters: dict):
    import importlib
    import unittest

    from test.test_asyncio import utils as test_utils

    factory = counters["factory"]
    _substitute_loops(unit, test_utils, factory)
    if unit in SELECTOR_LOOP_UNITS and counters["kind"] == "weaveloop":
        _substitute_selector_loop(factory)
    module = importlib.import_module(_module_name(unit))
    if unit != "test_events":
        if unit in BARE_LOOP_UNITS:
            _substitute_bare_loop(unit, module, factory)
        tests = list(_flatten(unittest.defaultTestLoader.loadTestsFromModule(module)))
        excluded = EXCLUDED_CLASSES.get(unit, {})
        unknown = set(excluded) - {type(t).__name__ for t in tests}
        if unknown:
            raise SystemExit(f"EXCLUDED_CLASSES[{unit!r}] names no test class: {sorted(unknown)}")
        return unittest.TestSuite(t for t in tests if type(t).__name__ not in excluded)

    bases = (module.UnixEventLoopTestsMixin, module.SubprocessTestsMixin, test_utils.TestCase)

    def create_event_loop(self):
        return factory()

    cls = type(MIXIN_CLASS, bases, {"create_event_loop": create_event_loop})
    # Let unittest see it as part of test_events (ids, setUpModule/tearDownModule).
    cls.__module__ = module.__name__
    cls.__qualname__ = MIXIN_CLASS
    return unittest.defaultTestLoader.loadTestsFromTestCase(cls)


def _substitute_loops(unit: str, test_utils, factory) -> None:
    """``new_test_loop()`` without a time generator makes a loop of the loop under test.

    Such a ``TestLoop`` is only a callback scheduler whose clock never moves; the tests
    using it pass unchanged on a real loop (checked on the stock loop). ``TestLoop`` with
    a time generator (deterministic virtual time) is kept.
    """
    orig = test_utils.TestCase.new_test_loop

    def new_test_loop(self, gen=None):
        if gen is not None:
            return orig(self, gen)
        loop = factory()
        self.set_event_loop(loop)
        return loop

    test_utils.TestCase.new_test_loop = new_test_loop


def _substitute_selector_loop(factory) -> None:
    """``asyncio.SelectorEventLoop(selector=None)`` makes a loop of the loop under test.

    The test modules look the name up at call time; asyncio itself never does (its
    policy uses ``_UnixSelectorEventLoop`` directly). A passed selector is closed, unused.
    """
    import asyncio

    def SelectorEventLoop(selector=None):
        if selector is not None:
            selector.close()
        return factory()

    asyncio.SelectorEventLoop = SelectorEventLoop


def _substitute_bare_loop(unit: str, module, factory) -> None:
    """test_runners and test_pep492 build a bare ``asyncio.BaseEventLoop()`` with a mocked
    selector; give them a loop of the loop under test instead (keeping the
    ``shutdown_asyncgens`` probe test_runners checks in tearDown)."""
    from test.test_asyncio import utils as test_utils

    if unit == "test_runners":

        def new_loop(self):
            loop = factory()
            loop.shutdown_ag_run = False
            real = loop.shutdown_asyncgens

            async def shutdown_asyncgens():
                loop.shutdown_ag_run = True
                await real()

            loop.shutdown_asyncgens = shutdown_asyncgens
            return loop

        module.BaseTest.new_loop = new_loop
    elif unit == "test_pep492":

        def setUp(self):
            test_utils.TestCase.setUp(self)
            self.loop = factory()
            self.set_event_loop(self.loop)

        module.BaseTest.setUp = setUp


def _flatten(suite):
    import unittest

    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from _flatten(t)
        else:
            yield t


def _inject_faults(tests) -> None:
    """Self-test hook: WEAVELOOP_CONFORMANCE_INJECT="id=crash,id=hang,id=park,id=wedge,id=fail"."""
    spec = os.environ.get("WEAVELOOP_CONFORMANCE_INJECT")
    if not spec:
        return
    faults = dict(item.split("=", 1) for item in spec.split(","))
    for t in tests:
        kind = faults.get(_short_id(t.id()))
        if kind is None:
            continue

        def fault(kind=kind):
            if kind == "crash":
                os.abort()
            if kind == "wedge":  # deaf to the alarm: only the faulthandler exit ends it
                signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            if kind == "park":  # a loop parked forever: the alarm must wake it
                import asyncio

                loop = asyncio.new_event_loop()
                try:
                    loop.run_until_complete(asyncio.sleep(1e6))
                finally:
                    loop.close()
            if kind in ("hang", "wedge"):
                time.sleep(1e6)
            raise AssertionError("injected failure")

        setattr(t, t._testMethodName, fault)


def child_main(args) -> None:
    import faulthandler
    import unittest

    faulthandler.enable()
    out = open(args.results, "a", buffering=1)  # line-buffered journal

    def emit(**rec):
        out.write(json.dumps(rec) + "\n")

    counters = _install_loop(args.loop)
    suite = _build_suite(args.child, counters)
    exclude = set(json.loads(Path(args.exclude).read_text())) if args.exclude else set()
    everything = list(_flatten(suite))
    tests = [t for t in everything if _short_id(t.id()) not in exclude]
    emit(tests=[_short_id(t.id()) for t in tests], known=[_short_id(t.id()) for t in everything])

    _inject_faults(tests)
    timeout = args.test_timeout

    def on_alarm(signum, frame):
        raise TestTimeout(f"conformance runner: test exceeded its {timeout:g} s timeout")

    class Result(unittest.TestResult):
        def startTest(self, test):
            super().startTest(test)
            self._id = _short_id(test.id())
            self._status, self._detail = PASS, ""
            self._loops0 = counters["loops"]
            self._t0 = time.monotonic()
            emit(start=self._id)
            signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout)
            faulthandler.dump_traceback_later(timeout + 20, exit=True)

        def stopTest(self, test):
            if _short_id(test.id()) != getattr(self, "_id", None):
                # Python 3.12+ stops, without starting them, the tests of a class it
                # skips as a whole (recorded by addSkip).
                super().stopTest(test)
                return
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
            emit(
                id=self._id,
                status=self._status,
                detail=self._detail[-8000:],
                loops=counters["loops"] - self._loops0,
                secs=round(time.monotonic() - self._t0, 3),
            )
            super().stopTest(test)

        def _fail(self, test, err):
            text = self._exc_info_to_string(err, test)
            if isinstance(test, unittest.TestCase) and _short_id(test.id()) == getattr(
                self, "_id", None
            ):
                timed_out = isinstance(err[1], TestTimeout) or self._status == HANG
                self._status = HANG if timed_out else FAIL
                self._detail += text
            else:  # class/module fixture error, outside any test
                emit(id=_fixture_id(str(test)), status=FAIL, detail=text[-8000:], loops=0)

        def addError(self, test, err):
            super().addError(test, err)
            self._fail(test, err)

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._fail(test, err)

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                self._status = FAIL
                self._detail += f"[subtest {subtest._subDescription()}]\n"
                self._detail += self._exc_info_to_string(err, test)

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            if _short_id(test.id()) == getattr(self, "_id", None):
                self._status, self._detail = SKIPPED, reason
            elif isinstance(test, unittest.TestCase):  # skipped without being started
                emit(id=_short_id(test.id()), status=SKIPPED, detail=reason, loops=0, secs=0)

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._status, self._detail = FAIL, "unexpected success of an expectedFailure test"

    unittest.TestSuite(tests).run(Result())
    emit(done=True, loops=counters["loops"], stock=counters["stock"])
    out.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Leftover non-daemon threads of a broken test must not hang the exit.
    os._exit(0)


# --------------------------------------------------------------------------- parent


@dataclass
class Expectation:
    status: str
    reason: str

    @property
    def env(self) -> bool:
        return self.reason.startswith(ENV_PREFIX)


def load_expectations(path: Path) -> dict[str, Expectation]:
    exp: dict[str, Expectation] = {}
    if not path.exists():
        return exp
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        body, _, reason = line.partition("#")
        parts = body.split()
        if len(parts) != 2 or parts[1] not in ("fail", "skip"):
            raise SystemExit(f"{path}:{n}: expected 'test_id fail|skip  # reason': {raw!r}")
        exp[parts[0]] = Expectation(parts[1], reason.strip() or TODO_REASON)
    return exp


HEADER = """\
# Conformance expectations: tests of CPython's test.test_asyncio that do not pass on
# weaveloop (run by tests/conformance/run.py). One per line:
#   module.Class.test_name  fail|skip  # one-line reason
# fail = runs and is expected to fail; skip = not run (it hangs or crashes the process).
# A reason starting with "env:" means the stock asyncio loop fails it on this machine
# too; only those entries apply to `run.py --loop asyncio`.
# This list only shrinks. Regenerate with `run.py --update-expectations` (keeps reasons).
"""


def write_expectations(path: Path, exp: dict[str, Expectation]) -> None:
    lines = [HEADER]
    by_unit: dict[str, list[str]] = {}
    for tid in exp:
        by_unit.setdefault(tid.split(".", 1)[0], []).append(tid)
    for unit in sorted(by_unit, key=lambda u: (UNITS.index(u) if u in UNITS else 99, u)):
        lines.append(f"\n# {unit}\n")
        ids = sorted(by_unit[unit])
        width = max(len(t) for t in ids)
        for tid in ids:
            e = exp[tid]
            lines.append(f"{tid:<{width}}  {e.status}  # {e.reason}\n")
    path.write_text("".join(lines))


@dataclass
class UnitResult:
    unit: str
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (status, detail)
    loops: int = 0
    stock_loops: int = 0
    tests_on_loop: int = 0
    attempts: int = 0
    secs: float = 0.0
    notes: list[str] = field(default_factory=list)


def _read_journal(path: Path):
    recs = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                recs.append(json.loads(line))
            except ValueError:
                pass  # torn last line of a killed child
    return recs


def run_unit(unit: str, args, exp: dict[str, Expectation], log_dir: Path) -> UnitResult:
    res = UnitResult(unit)
    skip = {
        t
        for t, e in exp.items()
        if e.status == "skip" and t.startswith(unit + ".") and (args.loop == "weaveloop" or e.env)
    }
    excluded = set() if args.run_skipped else set(skip)
    log_path = log_dir / f"{unit}.log"
    log_path.write_text("")
    t_start = time.monotonic()
    all_ids: list[str] = []
    known: set[str] = set()
    with tempfile.TemporaryDirectory(prefix=f"conformance-{unit}-") as tmp:
        tmpdir = Path(tmp)
        while True:
            res.attempts += 1
            journal = tmpdir / f"journal{res.attempts}.jsonl"
            excl_file = tmpdir / f"exclude{res.attempts}.json"
            excl_file.write_text(json.dumps(sorted(excluded)))
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                unit,
                "--loop",
                args.loop,
                "--results",
                str(journal),
                "--exclude",
                str(excl_file),
                "--test-timeout",
                str(args.test_timeout),
            ]
            remaining = min(
                args.module_timeout - (time.monotonic() - t_start),
                args.deadline - time.monotonic(),
            )
            log_offset = log_path.stat().st_size
            with open(log_path, "ab") as log:
                log.write(f"=== attempt {res.attempts}: {' '.join(cmd)}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=tmpdir,
                    start_new_session=True,
                )
                timed_out = False
                try:
                    rc = proc.wait(timeout=max(remaining, 1))
                except subprocess.TimeoutExpired:
                    timed_out = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait()
            recs = _read_journal(journal)
            started = None
            done = False
            for r in recs:
                if "tests" in r:
                    if not all_ids:
                        all_ids = list(r["tests"])
                        known = set(r["known"])
                elif "start" in r:
                    started = r["start"]
                elif "id" in r:
                    res.outcomes[r["id"]] = (r["status"], r.get("detail", ""))
                    if r.get("loops"):
                        res.tests_on_loop += 1
                    if r["id"] == started:
                        started = None
                    excluded.add(r["id"])
                elif r.get("done"):
                    done = True
                    res.loops += r["loops"]
                    res.stock_loops += r["stock"]
            # Loops of a killed attempt: count them from the per-test records.
            if not done:
                res.loops += sum(r.get("loops", 0) for r in recs if "id" in r)
            if done and rc == 0:
                break
            log_tail = log_path.read_bytes()[log_offset:].decode(errors="replace")
            if timed_out:
                why = "module/run timeout exceeded (--module-timeout/--total-timeout)"
                status = HANG
            elif rc == 1 and "Timeout (" in log_tail:
                why = f"hung past the {args.test_timeout:g} s test timeout (faulthandler exit)"
                status = HANG
            elif rc < 0:
                why = f"process killed by {signal.Signals(-rc).name}"
                status = CRASH
            else:
                why = f"process exited with status {rc}"
                status = CRASH
            if started is None:
                res.notes.append(f"{why} outside any test (attempt {res.attempts})")
                res.outcomes[f"{unit}.<process>"] = (CRASH, why + "\n" + log_tail[-3000:])
                break
            res.outcomes[started] = (status, why + "\n" + log_tail[-3000:])
            excluded.add(started)
            res.notes.append(f"{started}: {why}")
            if timed_out or res.attempts >= args.max_restarts:
                break
    res.secs = time.monotonic() - t_start
    for tid in all_ids:
        if tid not in res.outcomes:
            res.outcomes[tid] = (NOTRUN, "never ran (module killed or fixture failure)")
    for tid in (skip & known) - set(all_ids):
        res.outcomes.setdefault(tid, (XSKIP, exp[tid].reason))
    return res


def _summary(status: str, detail: str) -> str:
    """One line for a failure: the exception line, or why the process died."""
    if status in (CRASH, HANG, NOTRUN, XSKIP):
        return detail.strip().split("\n", 1)[0][:200]
    lines = [ln for ln in detail.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith((" ", "---", "===", "Ran ", "[subtest")):
            return ln.strip()[:200]
    return lines[-1].strip()[:200] if lines else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loop", choices=("weaveloop", "asyncio"), default="weaveloop")
    ap.add_argument("--only", action="append", default=[], metavar="MODULE")
    ap.add_argument("--update-expectations", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="modules run in parallel")
    ap.add_argument("--test-timeout", type=float, default=60.0)
    ap.add_argument("--module-timeout", type=float, default=300.0)
    ap.add_argument("--total-timeout", type=float, default=450.0)
    ap.add_argument("--max-restarts", type=int, default=8)
    ap.add_argument(
        "--run-skipped", action="store_true", help="run the tests expectations mark skip too"
    )
    ap.add_argument("--expectations", type=Path, default=EXPECTATIONS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--results", help=argparse.SUPPRESS)
    ap.add_argument("--exclude", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        child_main(args)
        return 0

    units = UNITS
    if args.only:
        wanted = [w for o in args.only for w in o.split(",") if w]
        wanted = [w if w.startswith("test_") else "test_" + w for w in wanted]
        bad = [w for w in wanted if w not in UNITS]
        if bad:
            ap.error(f"unknown module(s) {bad}; known: {UNITS}")
        units = [u for u in UNITS if u in wanted]

    if args.loop == "weaveloop":
        probe = subprocess.run(
            [sys.executable, "-c", "import weaveloop; weaveloop.new_event_loop().close()"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            print(probe.stderr.strip().splitlines()[-1] if probe.stderr else "", file=sys.stderr)
            print(
                "conformance: weaveloop is not importable/usable with "
                f"{sys.executable} (build it first, or use --loop asyncio)",
                file=sys.stderr,
            )
            print("conformance: 0 passed, 0 failed")
            return 1

    exp = load_expectations(args.expectations)
    log_dir = LOG_ROOT / args.loop
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"conformance: test.test_asyncio on {args.loop} ({sys.executable}); logs in {log_dir}")
    sys.stdout.flush()

    t0 = time.monotonic()
    args.deadline = t0 + args.total_timeout
    results: dict[str, UnitResult] = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futs = {pool.submit(run_unit, u, args, exp, log_dir): u for u in units}
        for fut in concurrent.futures.as_completed(futs):
            r = fut.result()
            results[r.unit] = r
            n_pass = sum(1 for s, _ in r.outcomes.values() if s == PASS)
            n_total = sum(1 for s, _ in r.outcomes.values() if s != SKIPPED)
            print(
                f"  {r.unit:<19} {n_pass:>4}/{n_total:<4} passed  {r.secs:6.1f}s  "
                f"{r.loops} {args.loop} loops in {r.tests_on_loop} tests"
                + (f", {r.stock_loops} stock loops" if args.loop == "weaveloop" else "")
                + (f", {r.attempts} attempts" if r.attempts > 1 else "")
            )
            for note in r.notes:
                print(f"      ! {note}")
            sys.stdout.flush()

    # ---- compare with expectations
    def applies(e: Expectation) -> bool:
        return args.loop == "weaveloop" or e.env

    passed = failed = unittest_skipped = 0
    unexpected: list[tuple[str, str, str]] = []
    now_passing: list[str] = []
    no_loop: list[str] = []
    failures_by_unit: dict[str, list[tuple[str, str, str]]] = {}
    for unit in units:
        r = results[unit]
        if r.loops == 0 and unit not in NO_LOOP_UNITS:
            no_loop.append(unit)
        fl = failures_by_unit.setdefault(unit, [])
        for tid, (status, detail) in sorted(r.outcomes.items()):
            if status == SKIPPED:
                unittest_skipped += 1
                continue
            if status == PASS:
                passed += 1
                e = exp.get(tid)
                if e is not None and applies(e):
                    now_passing.append(f"{tid}  ({e.status}  # {e.reason})")
                continue
            failed += 1
            fl.append((tid, status, detail))
            if status != XSKIP and tid not in exp:
                unexpected.append((tid, status, detail))
        with open(log_dir / f"{unit}.failures.txt", "w") as f:
            for tid, status, detail in fl:
                f.write(f"===== {tid} [{status}]\n{detail}\n")

    known_units = tuple(u + "." for u in units)
    stale = sorted(
        t
        for t, e in exp.items()
        if t.startswith(known_units)
        and applies(e)
        and not any(t in results[u].outcomes for u in units)
    )

    if args.verbose:
        for unit in units:
            for tid, status, detail in failures_by_unit[unit]:
                e = exp.get(tid)
                tag = f"expected {e.status}: {e.reason}" if e else "UNEXPECTED"
                print(f"  [{status}] {tid}  ({tag})  -> {_summary(status, detail)}")

    if now_passing:
        print(f"\nnow passing: remove from expectations ({len(now_passing)}):")
        for line in now_passing:
            print(f"  {line}")
    if stale:
        print(f"\nexpectations naming tests that do not exist ({len(stale)}):")
        for t in stale:
            print(f"  {t}")
    if unexpected:
        print(f"\nUNEXPECTED FAILURES ({len(unexpected)}):")
        for tid, status, detail in unexpected:
            if args.verbose:
                print(f"--- {tid} [{status}]\n{detail.rstrip()}\n")
            else:
                print(f"  [{status}] {tid}: {_summary(status, detail)}")
        print(f"  (tracebacks: {log_dir}/<module>.failures.txt, or -v)")
    if no_loop:
        print(f"\nNO {args.loop} LOOP CREATED by: {', '.join(no_loop)} (plug-in broken?)")

    if args.update_expectations:
        new = dict(exp)
        for unit in units:
            r = results[unit]
            for tid, (status, _detail) in r.outcomes.items():
                old = exp.get(tid)
                if old is not None and not applies(old):
                    continue  # a weaveloop entry, untouched by a stock-loop run
                if status in (PASS, SKIPPED):
                    new.pop(tid, None)
                elif status in (FAIL, NOTRUN):
                    reason = old.reason if old else TODO_REASON
                    if args.loop == "asyncio" and not reason.startswith(ENV_PREFIX):
                        reason = f"{ENV_PREFIX} {reason}"
                    new[tid] = Expectation(old.status if old else "fail", reason)
                elif status in (CRASH, HANG):
                    what = "crashes the process" if status == CRASH else "hangs"
                    reason = old.reason if old else f"{what}: {TODO_REASON}"
                    if args.loop == "asyncio" and not reason.startswith(ENV_PREFIX):
                        reason = f"{ENV_PREFIX} {reason}"
                    new[tid] = Expectation("skip", reason)
            for tid in stale:
                new.pop(tid, None)
        write_expectations(args.expectations, new)
        print(f"\nwrote {args.expectations} ({len(new)} entries)")

    secs = time.monotonic() - t0
    print(
        f"\n{args.loop}: {passed}/{passed + failed} passed, {unittest_skipped} skipped by "
        f"unittest, {len(unexpected)} unexpected failures, {secs:.0f}s"
    )
    print(f"conformance: {passed} passed, {failed} failed")
    return 1 if (unexpected or no_loop) and not args.update_expectations else 0


if __name__ == "__main__":
    sys.exit(main())
