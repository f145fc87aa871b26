"""Conformance runner for weaveloop.sync: CPython's own thread-side tests against it.

Runs ``test.lock_tests`` (LockTests, RLockTests, EventTests, ConditionTests,
SemaphoreTests, BoundedSemaphoreTests, BarrierTests: each takes the type under test as
a class attribute) and ``test.test_queue``'s mixins (QueueTest, LifoQueueTest,
PriorityQueueTest, BaseSimpleQueueTest: each takes a ``queue``-like module) with the
weaveloop.sync types plugged in, then compares the outcome with
``sync_expectations.txt`` (one line per test that does not pass, with a reason)::

    lock_tests.LockTests.test_foo  fail  # reason
    test_queue.QueueTest.test_bar  skip  # reason (not run: hangs)

Usage: ``python tests/conformance/sync_run.py [-v] [--update-expectations]``.
Exit status 1 on a failure not listed. Last line: ``sync conformance: N passed, N failed``.
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import types
import unittest
from pathlib import Path

import weaveloop.sync as ws
from test import lock_tests, test_queue

HERE = Path(__file__).resolve().parent
EXPECTATIONS = HERE / "sync_expectations.txt"
#: A whole run still going after this long is hung: dump stacks and exit.
HANG_GUARD = 600


def _queue_module() -> types.ModuleType:
    mod = types.ModuleType("weaveloop_sync_queue")
    mod.Queue = ws.Queue
    mod.LifoQueue = ws.LifoQueue
    mod.PriorityQueue = ws.PriorityQueue
    mod.SimpleQueue = ws.SimpleQueue
    mod.Empty = ws.QueueEmpty
    mod.Full = ws.QueueFull
    mod.ShutDown = ws.QueueShutDown
    return mod


def cases() -> dict[str, type[unittest.TestCase]]:
    """Test case classes by the name used in the expectations file."""
    q = _queue_module()
    st = staticmethod

    def case(base: type, **attrs: object) -> type[unittest.TestCase]:
        return type(base.__name__, (base, unittest.TestCase), attrs)

    class SimpleQueueTest(test_queue.BaseSimpleQueueTest, unittest.TestCase):
        queue = q

        def setUp(self) -> None:
            self.type2test = q.SimpleQueue
            super().setUp()

    return {
        "lock_tests.LockTests": case(lock_tests.LockTests, locktype=st(ws.Lock)),
        "lock_tests.RLockTests": case(lock_tests.RLockTests, locktype=st(ws.RLock)),
        "lock_tests.EventTests": case(lock_tests.EventTests, eventtype=st(ws.Event)),
        "lock_tests.ConditionTests": case(lock_tests.ConditionTests, condtype=st(ws.Condition)),
        "lock_tests.SemaphoreTests": case(lock_tests.SemaphoreTests, semtype=st(ws.Semaphore)),
        "lock_tests.BoundedSemaphoreTests": case(
            lock_tests.BoundedSemaphoreTests, semtype=st(ws.BoundedSemaphore)
        ),
        "lock_tests.BarrierTests": case(lock_tests.BarrierTests, barriertype=st(ws.Barrier)),
        "test_queue.QueueTest": case(test_queue.QueueTest, queue=q),
        "test_queue.LifoQueueTest": case(test_queue.LifoQueueTest, queue=q),
        "test_queue.PriorityQueueTest": case(test_queue.PriorityQueueTest, queue=q),
        "test_queue.SimpleQueueTest": SimpleQueueTest,
    }


def load_expectations() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    if not EXPECTATIONS.exists():
        return out
    for line in EXPECTATIONS.read_text().splitlines():
        body, _, reason = line.partition("#")
        parts = body.split()
        if len(parts) == 2:
            out[parts[0]] = (parts[1], reason.strip())
    return out


class _Result(unittest.TextTestResult):
    def __init__(self, *a: object, **k: object) -> None:
        super().__init__(*a, **k)
        self.outcomes: dict[str, str] = {}

    def _record(self, test: unittest.TestCase, outcome: str) -> None:
        self.outcomes[test.id()] = outcome

    def addSuccess(self, test):  # noqa: N802
        super().addSuccess(test)
        self._record(test, "pass")

    def addFailure(self, test, err):  # noqa: N802
        super().addFailure(test, err)
        self._record(test, "fail")

    def addError(self, test, err):  # noqa: N802
        super().addError(test, err)
        self._record(test, "fail")

    def addSkip(self, test, reason):  # noqa: N802
        super().addSkip(test, reason)
        self._record(test, "skipped")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--update-expectations", action="store_true")
    args = ap.parse_args()
    faulthandler.dump_traceback_later(HANG_GUARD, exit=True)
    expected = load_expectations()
    loader = unittest.TestLoader()
    outcomes: dict[str, str] = {}
    for name, cls in cases().items():
        suite = unittest.TestSuite()
        for test in loader.loadTestsFromTestCase(cls):
            key = f"{name}.{test.id().rsplit('.', 1)[1]}"
            if expected.get(key, ("",))[0] == "skip":
                outcomes[key] = "skip"
                continue
            suite.addTest(test)
        stream = sys.stdout if args.verbose else open("/dev/null", "w")  # noqa: SIM115
        runner = unittest.TextTestRunner(
            stream=stream, verbosity=2 if args.verbose else 0, resultclass=_Result
        )
        result = runner.run(suite)
        for test_id, outcome in result.outcomes.items():
            outcomes[f"{name}.{test_id.rsplit('.', 1)[1]}"] = outcome
    passed = sum(o == "pass" for o in outcomes.values())
    failed = [k for k, o in outcomes.items() if o == "fail"]
    unexpected = [k for k in failed if expected.get(k, ("",))[0] != "fail"]
    now_passing = [k for k, o in outcomes.items() if o == "pass" and k in expected]
    for k in unexpected:
        print(f"UNEXPECTED FAILURE: {k}")
    for k in now_passing:
        print(f"now passing (remove from expectations): {k}")
    if args.update_expectations:
        lines = []
        for k in sorted(outcomes):
            if outcomes[k] in ("fail", "skip"):
                reason = expected.get(k, ("", "TODO reason"))[1]
                lines.append(f"{k} {outcomes[k]}  # {reason}")
        EXPECTATIONS.write_text("\n".join(lines) + ("\n" if lines else ""))
    skipped = sum(o in ("skip", "skipped") for o in outcomes.values())
    print(f"sync conformance: {passed} passed, {len(failed)} failed, {skipped} skipped")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
