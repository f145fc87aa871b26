"""Conformance runner for weaveloop.ThreadPoolExecutor: CPython's own pool tests.

Runs every thread-pool test case of ``test.test_concurrent_futures`` (the classes that
take the pool under test from ``ThreadPoolMixin.executor_type``: executor, map,
shutdown, wait, as_completed, initializer tests) with ``weaveloop.ThreadPoolExecutor``
as that type, then compares the outcome with ``pool_expectations.txt`` (one line per
test that does not pass, with a reason; see ``_unittest_conformance.py``).

The runner loads the package that CPython's test suite has from 3.12 on (3.11 has one
module of another layout); a given interpreter's install may also leave it out (this
machine's 3.11 and 3.12 do). Either way the runner says it ran nothing, and exits 0.

Usage: ``python tests/conformance/pool_run.py [-v] [--update-expectations]``.
Last line: ``pool conformance: N passed, N failed, N skipped``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import unittest
from pathlib import Path

import _unittest_conformance
import weaveloop

HERE = Path(__file__).resolve().parent
EXPECTATIONS = HERE / "pool_expectations.txt"


def cases(verbose: bool) -> dict[str, type[unittest.TestCase]]:
    """Each thread-pool test case, subclassed to make weaveloop pools."""
    from test import support
    from test import test_concurrent_futures as package
    from test.test_concurrent_futures import util

    support.verbose = verbose  # the tests print their own timings when it is true

    found: dict[str, type[unittest.TestCase]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for attr, cls in vars(module).items():
            if (
                isinstance(cls, type)
                and issubclass(cls, unittest.TestCase)
                and issubclass(cls, util.ThreadPoolMixin)
                and cls.__module__ == module.__name__
            ):
                found[f"{info.name}.{attr}"] = type(
                    attr, (cls,), {"executor_type": weaveloop.ThreadPoolExecutor}
                )
    return found


def main() -> int:
    try:
        import test.test_concurrent_futures as package
    except ImportError:
        print("pool conformance: test.test_concurrent_futures is not installed here, not run")
        return 0
    if not hasattr(package, "__path__"):
        print("pool conformance: test.test_concurrent_futures is 3.11's single module, not run")
        return 0
    made = 0
    real_init = weaveloop.ThreadPoolExecutor.__init__

    def counting_init(self, *args, **kwargs) -> None:
        nonlocal made
        made += 1
        real_init(self, *args, **kwargs)

    weaveloop.ThreadPoolExecutor.__init__ = counting_init
    status = _unittest_conformance.main("pool conformance", cases, EXPECTATIONS)
    # Proof the tests ran on weaveloop pools, not the stdlib's.
    print(f"pool conformance: {made} weaveloop.ThreadPoolExecutor instances made")
    return status if made else 1


if __name__ == "__main__":
    sys.exit(main())
