"""Command line of ``python -m weaveloop.bench``: choose groups, workloads, contenders,
run them (runner.py), then print the tables and write the JSON and PNG.

Exit status: 0 when the suite ran (even if some jobs failed: they show as "n/a"),
2 for a bad command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import chart, groups, loops, machine, report, runner, sync_adapters
from .registry import Group, Workload
from .results import GroupResults

DEFAULT_RUNS = 5
QUICK_RUNS = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m weaveloop.bench",
        description="Side-by-side benchmarks: stock asyncio, uvloop, rloop and weaveloop "
        "(each job in a fresh process, loops interleaved, medians, ratios to uvloop); "
        "and weaveloop.sync against stdlib, janus, culsans and aiologic.",
    )
    p.add_argument(
        "--runs", type=int, help=f"runs per job (default {DEFAULT_RUNS}, {QUICK_RUNS} with --quick)"
    )
    p.add_argument("--only", help="comma-separated workloads or group names (see --list)")
    p.add_argument("--loops", help=f"comma-separated loops (default: {','.join(loops.LOOPS)})")
    p.add_argument(
        "--libs", help=f"comma-separated sync libraries (default: {','.join(sync_adapters.LIBS)})"
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs")
    p.add_argument("--out", default="bench-results", help="output directory (default %(default)s)")
    p.add_argument(
        "--sync-loop",
        default="asyncio",
        choices=loops.LOOPS,
        help="loop hosting the sync group's coroutines (default %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds before a job is declared hung (default %(default)s)",
    )
    p.add_argument("--list", action="store_true", help="list workloads and contenders, then exit")
    return p


def _split(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _list() -> None:
    for group in groups.GROUPS:
        print(f"{group.name}: {group.title} (baseline {group.baseline})")
        for c in group.contenders:
            why = group.available(c)
            print(f"  {group.axis} {c:<10} {'available' if why is None else why}")
        for w in group.workloads:
            print(f"  {w.name:<15} {w.doc}")
            print(f"  {'':<15} full {w.params}  quick {w.quick}")
        print()


def _select(
    args: argparse.Namespace, p: argparse.ArgumentParser
) -> list[tuple[Group, list[Workload], list[str], dict[str, str]]]:
    only = _split(args.only)
    known = {w.name for g in groups.GROUPS for w in g.workloads} | {g.name for g in groups.GROUPS}
    for name in only or []:
        if name not in known:
            p.error(f"unknown workload or group {name!r}; known: {', '.join(sorted(known))}")
    wanted = {"loop": _split(args.loops), "library": _split(args.libs)}
    for axis, names in wanted.items():
        valid = {c for g in groups.GROUPS if g.axis == axis for c in g.contenders}
        for name in names or []:
            if name not in valid:
                p.error(f"unknown {axis} {name!r}; known: {', '.join(sorted(valid))}")
    selection = []
    for group in groups.GROUPS:
        chosen = [w for w in group.workloads if not only or group.name in only or w.name in only]
        if not chosen:
            continue
        names = wanted.get(group.axis) or list(group.contenders)
        contenders, skipped = [], {}
        for c in (c for c in group.contenders if c in names):
            why = group.available(c)
            if why is None:
                contenders.append(c)
            else:
                skipped[c] = why
        selection.append((group, chosen, contenders, skipped))
    return selection


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.list:
        _list()
        return 0
    runs = args.runs if args.runs is not None else (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    if runs < 1:
        p.error("--runs must be at least 1")
    selection = _select(args, p)
    if any(g.axis == "library" for g, *_ in selection) and loops.unavailable(args.sync_loop):
        p.error(f"--sync-loop {args.sync_loop}: {loops.unavailable(args.sync_loop)}")
    settings: dict[str, Any] = {"sync_loop": args.sync_loop, "quick": args.quick}
    jobs = runner.plan([(g, ws, cs) for g, ws, cs, _ in selection], runs, args.quick)
    results = {
        g.name: GroupResults(
            g,
            ws,
            cs,
            skipped,
            {
                "params": {w.name: w.quick if args.quick else w.params for w in ws},
                **({"host_loop": args.sync_loop} if g.axis == "library" else {}),
            },
        )
        for g, ws, cs, skipped in selection
    }
    for res in results.values():
        for name, why in res.skipped.items():
            print(f"{res.group.name}: skipping {name}: {why}", file=sys.stderr)
    print(
        f"weaveloop.bench: {len(jobs)} jobs, {runs} runs each"
        f"{' (quick sizes)' if args.quick else ''}",
        file=sys.stderr,
    )

    build_before = machine.weaveloop_build()
    for warning in machine.build_warnings(build_before):
        print(f"warning: {warning}", file=sys.stderr)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} at start; numbers will be noisy", file=sys.stderr)
    started = datetime.now(timezone.utc)  # noqa: UP017 - readable on 3.11
    t0 = time.perf_counter()
    interrupted = False

    def collect(job: runner.Job, record: dict[str, Any]) -> None:
        results[job.group.name].add(job.workload.name, job.contender, record)

    try:
        runner.run_all(jobs, runs, settings, args.timeout, collect)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: reporting the runs finished so far", file=sys.stderr)

    print()
    for res in results.values():
        print(report.group_table(res, runs))
        print()
    build_after = machine.weaveloop_build()
    warnings = machine.build_warnings(build_before, build_after)
    for warning in warnings:
        print(f"warning: {warning}")

    versions = {
        "loops": {c: loops.version(c) for c in loops.LOOPS if not loops.unavailable(c)},
        "libraries": {
            c: sync_adapters.version(c)
            for c in sync_adapters.LIBS
            if not sync_adapters.unavailable(c)
        },
    }
    document = {
        "schema": 1,
        "started": started.isoformat(),
        "duration_s": time.perf_counter() - t0,
        "loadavg_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "interrupted": interrupted,
        "argv": sys.argv[1:] if argv is None else argv,
        "runs": runs,
        "quick": args.quick,
        "ratio_meaning": "> 1 means better than the group's baseline "
        "(throughput: contender/baseline, latency: baseline/contender)",
        "machine": machine.describe(versions),
        "warnings": warnings,
        "groups": {name: res.to_json() for name, res in results.items()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    json_path, png_path = out / f"bench-{stamp}.json", out / f"bench-{stamp}.png"
    report.write_json(json_path, document)
    print(f"raw runs and medians: {json_path}")
    if importlib.util.find_spec("matplotlib") is None:
        print("chart: not drawn, matplotlib is not installed (./scripts/bench.sh installs it)")
    else:
        chart.draw(png_path, list(results.values()), runs)
        if png_path.exists():
            print(f"chart: {png_path}")
    return 130 if interrupted else 0
