"""Scheduler v0: a pure function from a snapshot of nodes and pending runs to a plan.

The reconciler takes a snapshot from the store, calls `plan()`, and applies the result. Order is
priority (higher first), then submit order; each run goes to the node where it fits best (least
cpu left over). A run that fits nowhere gets a reason naming the exhausted resource.
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Node:
    name: str
    cpu_millis: int  # capacity
    memory: int  # capacity in bytes
    cpu_used: int = 0
    memory_used: int = 0
    cpu_enforced: bool = False  # whether the node enforces cpu shares (not the scheduler's concern)

    @property
    def cpu_free(self) -> int:
        return self.cpu_millis - self.cpu_used

    @property
    def memory_free(self) -> int:
        return self.memory - self.memory_used


@dataclass(frozen=True, slots=True)
class Pending:
    uuid: str
    cpu_millis: int
    memory: int
    priority: int = 0
    seq: int = 0


@dataclass(slots=True)
class Plan:
    placements: list[tuple[str, str]] = field(default_factory=list)  # (run uuid, node name)
    unplaced: dict[str, str] = field(default_factory=dict)  # run uuid -> reason


def cores(millis: int) -> str:
    return f"{millis / 1000:g}"


def gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


def charge(nodes: list[Node], running: list[dict[str, Any]]) -> list[Node]:
    """`nodes` with the cpu and memory of the running runs placed on them counted as used."""
    by_name = {n.name: n for n in nodes}
    for run in running:
        node = by_name.get(run["node"])
        if node is not None:
            node.cpu_used += run["cpu_millis"]
            node.memory_used += run["memory"]
    return nodes


def plan(nodes: list[Node], pending: list[Pending]) -> Plan:
    """Place as many pending runs as fit; nodes are copied, never changed."""
    free = [Node(n.name, n.cpu_millis, n.memory, n.cpu_used, n.memory_used) for n in nodes]
    result = Plan()
    for run in sorted(pending, key=lambda r: (-r.priority, r.seq)):
        fits = [n for n in free if n.cpu_free >= run.cpu_millis and n.memory_free >= run.memory]
        if not fits:
            result.unplaced[run.uuid] = _reason(free, run)
            continue
        best = min(fits, key=lambda n: (n.cpu_free - run.cpu_millis, n.memory_free - run.memory, n.name))
        best.cpu_used += run.cpu_millis
        best.memory_used += run.memory
        result.placements.append((run.uuid, best.name))
    return result


def _reason(nodes: list[Node], run: Pending) -> str:
    if not nodes:
        return "waiting: no node is available"
    cpu_ok = [n for n in nodes if n.cpu_free >= run.cpu_millis]
    if not cpu_ok:
        most = max(nodes, key=lambda n: n.cpu_free)
        return (f"waiting for cpu: needs {cores(run.cpu_millis)} cores, most free is "
                f"{cores(most.cpu_free)} of {cores(most.cpu_millis)} on {most.name}")
    most = max(cpu_ok, key=lambda n: n.memory_free)
    return (f"waiting for memory: needs {gib(run.memory)}, most free with enough cpu is "
            f"{gib(most.memory_free)} on {most.name}")
