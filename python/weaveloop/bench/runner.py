"""Plans the jobs and runs each in its own subprocess, reporting progress to stderr.

Order: run 1 of every (workload, contender), then run 2, ...; within a run the
contenders of a workload follow each other in an order rotated per run, so drift
(thermal, background load) spreads over all of them. Invariant: a job's failure,
crash or timeout is recorded as a failed run and never stops the suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import Group, Workload
from .units import format_metrics

TAIL_CHARS = 8000


@dataclass(frozen=True)
class Job:
    group: Group
    workload: Workload
    contender: str
    run: int
    params: dict[str, Any] = field(hash=False)


def plan(
    selection: list[tuple[Group, list[Workload], list[str]]], runs: int, quick: bool
) -> list[Job]:
    """Jobs for ``selection`` (group, its workloads, its contenders), interleaved."""
    jobs = []
    for run in range(runs):
        for group, workloads, contenders in selection:
            shift = run % len(contenders) if contenders else 0
            order = contenders[shift:] + contenders[:shift]
            for workload in workloads:
                params = workload.quick if quick else workload.params
                for contender in order:
                    if group.applicable(workload, contender):
                        jobs.append(Job(group, workload, contender, run, params))
    return jobs


def _package_root() -> str:
    """The directory holding the ``weaveloop`` package, for the children's sys.path."""
    import weaveloop

    return str(Path(weaveloop.__file__).resolve().parent.parent)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _tail(text: str | bytes | None, limit: int | None = TAIL_CHARS) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-limit:] if limit else (text or "")


def execute(job: Job, settings: dict[str, Any], timeout: float, scratch: str) -> dict[str, Any]:
    """Run one job in a fresh interpreter; return its run record (see worker.py)."""
    result_path = os.path.join(scratch, "result.json")
    if os.path.exists(result_path):
        os.unlink(result_path)
    spec = {
        "group": job.group.name,
        "workload": job.workload.name,
        "contender": job.contender,
        "params": job.params,
        "settings": settings,
        "timeout": timeout,
    }
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_package_root(), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "weaveloop.bench.worker", json.dumps(spec), result_path]
    t0 = time.perf_counter()
    stderr: str | bytes | None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 15, env=env)
        returncode, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, stderr = None, exc.stderr
    wall = time.perf_counter() - t0
    record: dict[str, Any]
    if os.path.exists(result_path):
        with open(result_path) as f:
            record = json.load(f)
        if returncode != 0:
            record["warning"] = f"worker exited with status {returncode} after its result"
    elif returncode is None:
        record = {"ok": False, "error": f"killed: no result after {timeout + 15:g} s"}
    elif "Timeout (" in _tail(stderr, limit=None):
        record = {"ok": False, "error": f"timed out after {timeout:g} s (stacks in stderr)"}
    elif returncode < 0:
        record = {"ok": False, "error": f"worker killed by {_signal_name(-returncode)}, no result"}
    else:
        record = {"ok": False, "error": f"worker died with status {returncode}, no result"}
    if not record.get("ok") or record.get("warning"):
        record["stderr"] = _tail(stderr)
    record.update(run=job.run, wall_s=wall)
    return record


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def run_all(
    jobs: list[Job],
    runs: int,
    settings: dict[str, Any],
    timeout: float,
    on_record: Callable[[Job, dict[str, Any]], None],
) -> None:
    """Execute ``jobs`` in order, one progress line per finished job on stderr."""
    width = len(str(len(jobs)))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="weaveloop-bench-") as scratch:
        for i, job in enumerate(jobs, 1):
            record = execute(job, settings, timeout, scratch)
            on_record(job, record)
            elapsed = time.perf_counter() - started
            eta = elapsed / i * (len(jobs) - i)
            if record.get("ok"):
                outcome = format_metrics(job.workload.metrics, record["metrics"])
            else:
                outcome = "FAILED: " + record["error"].splitlines()[0][:100]
            if record.get("warning"):
                outcome += f"  [{record['warning']}]"
            print(
                f"[{i:>{width}}/{len(jobs)}] run {job.run + 1}/{runs}  "
                f"{job.workload.name:<14} {job.contender:<10} {outcome}  "
                f"({record['wall_s']:.1f} s, eta {_clock(eta)})",
                file=sys.stderr,
                flush=True,
            )
