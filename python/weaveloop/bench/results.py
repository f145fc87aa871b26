"""Collects run records into medians and ratios to each group's baseline.

A ratio > 1 always means better than the baseline: contender/baseline for a
throughput, baseline/contender for a latency. Medians use successful runs only;
a cell with no successful run is "n/a" and keeps its errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .registry import Group, Metric, Workload
from .stats import median


@dataclass
class Cell:
    """All runs of one (workload, contender)."""

    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok_runs(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r.get("ok")]

    @property
    def failed(self) -> int:
        return len(self.runs) - len(self.ok_runs)

    def median(self, metric: Metric) -> float | None:
        values = [r["metrics"][metric.name] for r in self.ok_runs]
        return median(values) if values else None

    def first_error(self) -> str | None:
        for r in self.runs:
            if not r.get("ok"):
                return r.get("error")
        return None


def ratio(metric: Metric, value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None or value <= 0 or baseline <= 0:
        return None
    return value / baseline if metric.higher_is_better else baseline / value


@dataclass
class GroupResults:
    """The outcome of one group: which contenders ran, were skipped, and every cell."""

    group: Group
    workloads: list[Workload]
    contenders: list[str]
    skipped: dict[str, str]
    settings: dict[str, Any]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)

    def add(self, workload: str, contender: str, record: dict[str, Any]) -> None:
        self.cells.setdefault((workload, contender), Cell()).runs.append(record)

    def cell(self, workload: str, contender: str) -> Cell | None:
        return self.cells.get((workload, contender))

    @property
    def baseline(self) -> str | None:
        """The group's baseline if it ran, else the first contender that did."""
        if self.group.baseline in self.contenders:
            return self.group.baseline
        return self.contenders[0] if self.contenders else None

    def median(self, workload: Workload, contender: str, metric: Metric) -> float | None:
        cell = self.cell(workload.name, contender)
        return cell.median(metric) if cell else None

    def ratio(self, workload: Workload, contender: str, metric: Metric) -> float | None:
        base = self.baseline
        if base is None:
            return None
        return ratio(
            metric,
            self.median(workload, contender, metric),
            self.median(workload, base, metric),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "title": self.group.title,
            "axis": self.group.axis,
            "baseline": self.baseline,
            "contenders": self.contenders,
            "skipped": self.skipped,
            "settings": self.settings,
            "workloads": {},
        }
        for w in self.workloads:
            entry: dict[str, Any] = {
                "doc": w.doc,
                "params": self.settings.get("params", {}).get(w.name),
                "metrics": [
                    {"name": m.name, "unit": m.unit, "higher_is_better": m.higher_is_better}
                    for m in w.metrics
                ],
                "results": {},
            }
            for c in self.contenders:
                cell = self.cell(w.name, c)
                if cell is None:
                    entry["results"][c] = {"applicable": False}
                    continue
                entry["results"][c] = {
                    "median": {m.name: cell.median(m) for m in w.metrics},
                    "ratio_to_baseline": {m.name: self.ratio(w, c, m) for m in w.metrics},
                    "failed_runs": cell.failed,
                    "errors": sorted({r["error"] for r in cell.runs if not r.get("ok")}),
                    "runs": cell.runs,
                }
            out["workloads"][w.name] = entry
        return out
