"""weaveloop's benchmark suite: ``python -m weaveloop.bench`` (``--help``, ``--list``).

Stock asyncio, uvloop, rloop and weaveloop side by side (issue 2), and weaveloop.sync
against stdlib, janus, culsans and aiologic (issue 4). Every (workload, contender,
run) is a fresh subprocess (worker.py); runs are interleaved, medians reported as a
table with ratios to the baseline, a JSON of all raw runs, and a PNG chart.
A benchmark is never part of the test suite. Sizes: loop_workloads.py, sync_workloads.py.
"""

from .cli import main

__all__ = ["main"]
