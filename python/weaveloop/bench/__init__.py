"""weaveloop's benchmark suite: ``python -m weaveloop.bench`` (``--help``, ``--list``).

Stock asyncio, uvloop, rloop and weaveloop side by side (issue 2), and weaveloop.sync
against stdlib, janus, culsans and aiologic (issue 4). Every (workload, contender,
run) is a fresh subprocess (worker.py); runs are interleaved, medians reported as a
table with ratios to the baseline, a JSON of all raw runs, and a PNG chart.
A benchmark is never part of the test suite. Sizes: loop_workloads.py, sync_workloads.py.
Importing this package stays cheap: the worker processes import it too.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Run the suite with command-line ``argv`` (see ``cli.py``); return the exit status."""
    from .cli import main as cli_main

    return cli_main(argv)
