"""In-process fan-out of what a committed write changed.

Job state changes go to `Watch` and `Logs` streams and to the reconciler's conditions; the runs a
write touched (made, moved, asked to stop) go to the reconciler, which reads them again to keep
its scheduling index in step with the store. The store publishes after each commit, while it
still holds its write lock, so subscribers see changes in commit order.
"""

import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JobEvent:
    uuid: str
    path: str
    state: str
    reason: str
    exit_code: int | None


class Bus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[queue.SimpleQueue[JobEvent]] = set()
        self._run_subscribers: set[queue.SimpleQueue[str]] = set()

    def subscribe(self) -> "queue.SimpleQueue[JobEvent]":
        q: queue.SimpleQueue[JobEvent] = queue.SimpleQueue()
        with self._lock:
            self._subscribers.add(q)
        return q

    def unsubscribe(self, q: "queue.SimpleQueue[JobEvent]") -> None:
        with self._lock:
            self._subscribers.discard(q)

    def subscribe_runs(self) -> "queue.SimpleQueue[str]":
        """A queue of the uuids of runs that committed writes touched."""
        q: queue.SimpleQueue[str] = queue.SimpleQueue()
        with self._lock:
            self._run_subscribers.add(q)
        return q

    def publish(self, events: list[JobEvent], runs: Iterable[str] = ()) -> None:
        with self._lock:
            subscribers, run_subscribers = list(self._subscribers), list(self._run_subscribers)
        for q in subscribers:
            for event in events:
                q.put(event)
        if run_subscribers:
            runs = list(runs)
            for rq in run_subscribers:
                for run in runs:
                    rq.put(run)
