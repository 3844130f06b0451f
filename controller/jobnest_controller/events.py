"""In-process fan-out of what a committed write changed.

Job state changes go to `Watch` and `Logs` streams and to the reconciler's conditions; the runs a
write touched (made, moved, asked to stop) go to the reconciler, which reads them again to keep
its scheduling index in step with the store (new runs come whole). The store publishes after
each commit, while it still holds its write lock, so subscribers see changes in commit order.
"""

import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple


@dataclass(frozen=True, slots=True)
class JobEvent:
    uuid: str
    path: str
    state: str
    reason: str
    exit_code: int | None
    parent: str = ""  # on a new job's event: the job that spawned it


class RunChanges(NamedTuple):
    touched: list[str]  # runs moved or asked to stop, to be read again
    made: list[dict[str, Any]]  # new runs, whole


class Bus:
    """Each subscriber's queue gets one list per commit, not one item per change: a put wakes a
    waiting reader, and waking it 1000 times for one commit would cost more than the commit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[queue.SimpleQueue[list[JobEvent]]] = set()
        self._run_subscribers: set[queue.SimpleQueue[RunChanges]] = set()

    def subscribe(self) -> "queue.SimpleQueue[list[JobEvent]]":
        q: queue.SimpleQueue[list[JobEvent]] = queue.SimpleQueue()
        with self._lock:
            self._subscribers.add(q)
        return q

    def unsubscribe(self, q: "queue.SimpleQueue[list[JobEvent]]") -> None:
        with self._lock:
            self._subscribers.discard(q)

    def subscribe_runs(self) -> "queue.SimpleQueue[RunChanges]":
        """A queue of what each committed write did to runs."""
        q: queue.SimpleQueue[RunChanges] = queue.SimpleQueue()
        with self._lock:
            self._run_subscribers.add(q)
        return q

    def publish(self, events: list[JobEvent], runs: Iterable[str] = (), new_runs: Iterable[dict[str, Any]] = ()
                ) -> None:
        with self._lock:
            subscribers, run_subscribers = list(self._subscribers), list(self._run_subscribers)
        if events:
            for q in subscribers:
                q.put(events)
        changes = RunChanges(list(runs), list(new_runs))
        if changes.touched or changes.made:
            for rq in run_subscribers:
                rq.put(changes)
