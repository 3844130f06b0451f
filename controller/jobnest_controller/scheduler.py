"""The scheduler: a pure function from nodes and the queue of runs waiting for them to a plan.

The reconciler keeps each executor's `Queue` in memory and calls `plan()` every pass; `plan`
changes neither. Capacity is shared fairly between owners: the next run placed is the best-ordered
run that fits (priority, then submit order) of the owner with the least cpu in use, so an owner
who submits later still gets an equal share. Each run goes to the node where it fits best (least
cpu left over). Only the head of each (owner, shape) list is looked at, so a pass costs what it
places, not the length of the queue, and a run deep in the queue that fits is placed. A run that
has waited longest, past `RESERVE_AFTER`, goes first; if it fits nowhere, the node that can hold it
is kept free of new work until it does (as backfill schedulers reserve for the head of the queue),
so small runs cannot starve large ones.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedList  # type: ignore[import-untyped]

RESERVE_AFTER = 30.0  # seconds a blocked run waits before it may hold a node for itself

Shape = tuple[int, int]  # (cpu millicores, memory bytes)


@dataclass(slots=True)
class Node:
    name: str
    cpu_millis: int  # capacity
    memory: int  # capacity in bytes
    cpu_used: int = 0
    memory_used: int = 0
    cpu_enforced: bool = False  # whether the node enforces cpu shares (not the scheduler's concern)
    machine: str = ""  # nodes of several executors on one machine share its cores and memory

    @property
    def cpu_free(self) -> int:
        return self.cpu_millis - self.cpu_used

    @property
    def memory_free(self) -> int:
        return self.memory - self.memory_used

    def fits(self, shape: Shape) -> bool:
        return self.cpu_free >= shape[0] and self.memory_free >= shape[1]

    def holds(self, shape: Shape) -> bool:
        """Whether the run could fit here once the node is empty."""
        return self.cpu_millis >= shape[0] and self.memory >= shape[1]


@dataclass(frozen=True, slots=True)
class Pending:
    uuid: str
    cpu_millis: int
    memory: int
    priority: int = 0
    seq: int = 0
    owner: str = ""
    ready_at: float = 0.0  # when it joined the queue

    @property
    def shape(self) -> Shape:
        return self.cpu_millis, self.memory


class Queue:
    """The runs of one executor waiting for capacity: by owner, then by shape, each shape's runs
    in priority then submit order. Adding or removing a run costs O(log n)."""

    def __init__(self) -> None:
        self.runs: dict[str, Pending] = {}
        self.owners: dict[str, dict[Shape, SortedList]] = {}

    def __len__(self) -> int:
        return len(self.runs)

    def add(self, run: Pending) -> None:
        if run.uuid in self.runs:
            return
        self.runs[run.uuid] = run
        self.owners.setdefault(run.owner, {}).setdefault(run.shape, SortedList()).add(_order(run))

    def remove(self, uuid: str) -> Pending | None:
        run = self.runs.pop(uuid, None)
        if run is None:
            return None
        shapes = self.owners[run.owner]
        shapes[run.shape].remove(_order(run))
        if not shapes[run.shape]:
            del shapes[run.shape]
            if not shapes:
                del self.owners[run.owner]
        return run

    def heads(self) -> Iterator[tuple[str, Shape, SortedList]]:
        for owner, shapes in self.owners.items():
            for shape, ordered in shapes.items():
                yield owner, shape, ordered


@dataclass(slots=True)
class Plan:
    placements: list[tuple[str, str]] = field(default_factory=list)  # (run uuid, node name)
    reserved: tuple[str, str] | None = None  # (node name, run uuid): the node kept for that run
    nodes: list[Node] = field(default_factory=list)  # as they will be once the placements start


def _order(run: Pending) -> tuple[int, int, str]:
    return -run.priority, run.seq, run.uuid


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


THIS_MACHINE = "this machine"  # the controller's own: the local node's, and a local Docker engine's


def charge_all(nodes: dict[str, list[Node]], running: list[dict[str, Any]]) -> dict[str, list[Node]]:
    """Each executor's nodes charged with its own running runs, and with those of other
    executors' nodes on the same machine: two executors on one machine do not both offer all
    of its cores."""
    machine = {(name, n.name): n.machine for name, found in nodes.items() for n in found}
    for name, found in nodes.items():
        charge(found, [r for r in running if r["executor"] == name])
        for node in found:
            for run in running:
                if node.machine and run["executor"] != name and machine.get((run["executor"], run["node"])) \
                        == node.machine:
                    node.cpu_used += run["cpu_millis"]
                    node.memory_used += run["memory"]
    return nodes


def plan(nodes: list[Node], queue: Queue, usage: dict[str, int] | None = None, now: float = 0.0,
         reserve_after: float = RESERVE_AFTER) -> Plan:
    """Place as many queued runs as fit; `usage` is each owner's cpu in use. Nothing given is changed."""
    free = [Node(n.name, n.cpu_millis, n.memory, n.cpu_used, n.memory_used, n.cpu_enforced) for n in nodes]
    result = Plan(nodes=free)
    usage = dict(usage or {})
    taken: dict[tuple[str, Shape], int] = {}  # how many of each (owner, shape) list are placed

    def place(run: Pending, among: list[Node]) -> None:
        best = min((n for n in among if n.fits(run.shape)),
                   key=lambda n: (n.cpu_free - run.cpu_millis, n.memory_free - run.memory, n.name))
        best.cpu_used += run.cpu_millis
        best.memory_used += run.memory
        usage[run.owner] = usage.get(run.owner, 0) + run.cpu_millis
        taken[run.owner, run.shape] = taken.get((run.owner, run.shape), 0) + 1
        result.placements.append((run.uuid, best.name))

    usable = free
    oldest = min((queue.runs[ordered[0][2]] for _, _, ordered in queue.heads()), key=lambda r: r.ready_at,
                 default=None)
    if oldest is not None and now - oldest.ready_at >= reserve_after:
        if any(n.fits(oldest.shape) for n in free):
            place(oldest, free)
        elif holders := [n for n in free if n.holds(oldest.shape)]:
            keep = max(holders, key=lambda n: (n.cpu_free, n.memory_free, n.name))
            result.reserved = keep.name, oldest.uuid
            usable = [n for n in free if n is not keep]
    dead: set[Shape] = set()  # shapes that fit no node: free capacity only shrinks during a pass
    while True:
        best: tuple[tuple[int, tuple[int, int, str]], str, Shape] | None = None
        for owner, shape, ordered in queue.heads():
            i = taken.get((owner, shape), 0)
            if i >= len(ordered) or shape in dead:
                continue
            if not any(n.fits(shape) for n in usable):
                dead.add(shape)
                continue
            rank = (usage.get(owner, 0), ordered[i])
            if best is None or rank < best[0]:
                best = rank, owner, shape
        if best is None:
            return result
        (_, (_, _, uuid)), _, _ = best
        place(queue.runs[uuid], usable)


def reason(nodes: list[Node], shape: Shape, reserved: tuple[str, str] | None = None) -> str:
    """Why a run of `shape` waits, given the nodes as the last plan left them."""
    if not nodes:
        return "waiting: no node is available"
    if reserved and any(n.fits(shape) for n in nodes):
        return (f"waiting: node {reserved[0]} is kept free for run {reserved[1]}, which has waited longest "
                "and needs more than is free")
    cpu, memory = shape
    cpu_ok = [n for n in nodes if n.cpu_free >= cpu]
    if not cpu_ok:
        most = max(nodes, key=lambda n: n.cpu_free)
        return (f"waiting for cpu: needs {cores(cpu)} cores, most free is "
                f"{cores(max(most.cpu_free, 0))} of {cores(most.cpu_millis)} on {most.name}")
    if any(n.fits(shape) for n in nodes):
        return "waiting for its turn: capacity is shared between owners"
    most = max(cpu_ok, key=lambda n: n.memory_free)
    return (f"waiting for memory: needs {gib(memory)}, most free with enough cpu is "
            f"{gib(most.memory_free)} on {most.name}")
