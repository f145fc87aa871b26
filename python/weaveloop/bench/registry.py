"""What a benchmark is: metrics, workloads and the groups that hold them.

A *group* compares *contenders* (event loops, or sync-primitive libraries) on its
workloads, against one baseline contender. Adding a group means writing a module
that builds a ``Group`` and listing it in ``groups.py``; the runner, worker, report
and chart know nothing else. Invariant: workload names are unique across groups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One number a workload reports; ``higher_is_better`` orients the ratio."""

    name: str
    unit: str
    higher_is_better: bool
    label: str = ""


def throughput(unit: str) -> Metric:
    return Metric("throughput", unit, True, unit)


def latency(name: str, what: str = "latency") -> Metric:
    """A latency (or lateness) percentile, reported in milliseconds."""
    return Metric(name, "ms", False, f"{name} {what}")


@dataclass(frozen=True)
class Workload:
    """One benchmark: ``func`` runs inside the worker process and returns a dict.

    The dict maps each metric name to its value; an optional ``"extra"`` key holds
    informative numbers that go to the JSON only. ``params`` are the full-size
    arguments, ``quick`` the ``--quick`` ones. ``needs`` names the contender
    capability the workload requires (a contender without it is skipped, not failed).
    """

    name: str
    doc: str
    metrics: tuple[Metric, ...]
    func: Callable[..., Any]
    params: dict[str, Any]
    quick: dict[str, Any]
    needs: str | None = None
    loop_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Group:
    """A set of workloads run on each contender, compared with ``baseline``.

    ``available(contender)`` returns None when the contender can run here, else the
    reason it cannot (e.g. "not importable"). ``capabilities(contender)`` is the set
    of workload ``needs`` it supports. ``run_job`` runs one job in the worker.
    """

    name: str
    title: str
    axis: str
    baseline: str
    contenders: tuple[str, ...]
    workloads: tuple[Workload, ...]
    available: Callable[[str], str | None]
    run_job: Callable[[Workload, str, dict[str, Any], dict[str, Any]], dict[str, Any]]
    capabilities: Callable[[str], frozenset[str]] = lambda contender: frozenset()

    def workload(self, name: str) -> Workload:
        for w in self.workloads:
            if w.name == name:
                return w
        raise KeyError(name)

    def applicable(self, workload: Workload, contender: str) -> bool:
        return workload.needs is None or workload.needs in self.capabilities(contender)
