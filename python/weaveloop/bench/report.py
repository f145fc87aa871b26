"""The text report: one table per group (medians, then ratios to the baseline) and
the notes a reader needs (skipped contenders, failures), plus the JSON document.

Cells: "n/a" = every run failed (error in the notes and the JSON), "-" = not
applicable to that contender, a trailing "*" = some runs failed (median of the rest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import units
from .results import GroupResults


def _table(rows: list[list[str]], right_from: int, separator_at: int) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = []
        for i, text in enumerate(row):
            cells.append(text.rjust(widths[i]) if i >= right_from else text.ljust(widths[i]))
            if i == separator_at - 1 and separator_at < len(row):
                cells.append("|")
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("-" * len(lines[0]))
    return lines


def group_table(res: GroupResults, runs: int) -> str:
    base = res.baseline
    others = [c for c in res.contenders if c != base]
    noun = "loop" if res.group.axis == "loop" else res.group.axis
    title = f"{res.group.title}: median of {runs} run{'s' if runs != 1 else ''}"
    if res.settings.get("host_loop"):
        title += f", on the {res.settings['host_loop']} loop"
    if not others:
        explain = f"no ratios: only one {noun} ran"
    else:
        explain = (
            f"ratio = vs {base}; > 1 means better than {base} for every metric "
            f"(throughput: {noun}/{base}, latency: {base}/{noun})"
        )
        if base != res.group.baseline:
            explain += f"; {res.group.baseline} did not run"
    head = [title, explain, ""]
    header = ["workload", "metric", *res.contenders, *[f"{c}/{base}" for c in others]]
    rows = [header]
    failures = []
    for w in res.workloads:
        for k, m in enumerate(w.metrics):
            row = [w.name if k == 0 else "", units.metric_label(m)]
            for c in res.contenders:
                cell = res.cell(w.name, c)
                if cell is None:
                    row.append("-")
                    continue
                med = cell.median(m)
                row.append(
                    "n/a" if med is None else units.value(m, med) + ("*" if cell.failed else "")
                )
                if k == 0 and cell.failed:
                    failures.append(
                        f"  {c} on {w.name}: {cell.failed}/{len(cell.runs)} runs failed: "
                        f"{(cell.first_error() or '').splitlines()[0][:160]}"
                    )
            for c in others:
                r = res.ratio(w, c, m)
                row.append(
                    "-" if res.cell(w.name, c) is None else ("n/a" if r is None else units.ratio(r))
                )
            rows.append(row)
    lines = head + _table(rows, right_from=2, separator_at=2 + len(res.contenders))
    for name, why in res.skipped.items():
        lines.append(f"  {name}: skipped ({why})")
    if failures:
        lines.append("failures (details in the JSON):")
        lines.extend(failures)
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")
