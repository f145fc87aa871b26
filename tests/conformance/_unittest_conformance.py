"""What the in-process conformance runners share (``sync_run.py``, ``pool_run.py``).

Each runner names CPython test-case classes with the weaveloop type plugged in; this
module runs them, compares the outcome with the runner's expectations file (one line
per test that does not pass, with a reason)::

    lock_tests.LockTests.test_foo  fail  # reason
    test_queue.QueueTest.test_bar  skip  # reason (not run: hangs)

and prints ``LABEL: N passed, N failed, N skipped`` last. Exit status 1 on a failure
not listed.
"""

from __future__ import annotations

import argparse
import faulthandler
import sys
import unittest
from collections.abc import Callable
from pathlib import Path

#: A whole run still going after this long is hung: dump stacks and exit.
HANG_GUARD = 600


def load_expectations(path: Path) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
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


def main(
    label: str,
    cases: Callable[[bool], dict[str, type[unittest.TestCase]]],
    expectations: Path,
) -> int:
    """Run what ``cases(verbose)`` returns (test-case classes by the name the
    expectations file uses)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--update-expectations", action="store_true")
    args = ap.parse_args()
    faulthandler.dump_traceback_later(HANG_GUARD, exit=True)
    expected = load_expectations(expectations)
    loader = unittest.TestLoader()
    outcomes: dict[str, str] = {}
    for name, cls in cases(args.verbose).items():
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
        expectations.write_text("\n".join(lines) + ("\n" if lines else ""))
    skipped = sum(o in ("skip", "skipped") for o in outcomes.values())
    print(f"{label}: {passed} passed, {len(failed)} failed, {skipped} skipped")
    return 1 if unexpected else 0
