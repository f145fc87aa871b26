"""Conformance runner for weaveloop.sync: CPython's own thread-side tests against it.

Runs ``test.lock_tests`` (LockTests, RLockTests, EventTests, ConditionTests,
SemaphoreTests, BoundedSemaphoreTests, BarrierTests: each takes the type under test as
a class attribute) and ``test.test_queue``'s mixins (QueueTest, LifoQueueTest,
PriorityQueueTest, BaseSimpleQueueTest: each takes a ``queue``-like module) with the
weaveloop.sync types plugged in, then compares the outcome with
``sync_expectations.txt`` (one line per test that does not pass, with a reason; see
``_unittest_conformance.py``).

Usage: ``python tests/conformance/sync_run.py [-v] [--update-expectations]``.
Exit status 1 on a failure not listed. Last line: ``sync conformance: N passed, N failed``.
"""

from __future__ import annotations

import sys
import types
import unittest
from pathlib import Path

import _unittest_conformance
import weaveloop.sync as ws
from test import lock_tests, test_queue

HERE = Path(__file__).resolve().parent
EXPECTATIONS = HERE / "sync_expectations.txt"


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


def main() -> int:
    return _unittest_conformance.main("sync conformance", lambda _verbose: cases(), EXPECTATIONS)


if __name__ == "__main__":
    sys.exit(main())
