"""The benchmark groups, in report order; add a group by appending it here.

Invariant: a workload name appears in one group only (``--only`` selects by it).
"""

from __future__ import annotations

from .loop_workloads import GROUP as LOOPS
from .registry import Group, Workload
from .socket_workloads import GROUP as SOCKETS
from .sync_workloads import GROUP as SYNC

GROUPS: tuple[Group, ...] = (LOOPS, SOCKETS, SYNC)


def get(name: str) -> Group:
    for group in GROUPS:
        if group.name == name:
            return group
    raise KeyError(f"no benchmark group {name!r}")


def find_workload(name: str) -> tuple[Group, Workload] | None:
    for group in GROUPS:
        for workload in group.workloads:
            if workload.name == name:
                return group, workload
    return None
