"""In-process fan-out of job state changes to `Watch` and `Logs` streams.

The store publishes after each commit; every subscriber gets its own queue and filters it.
"""

import queue
import threading
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

    def subscribe(self) -> "queue.SimpleQueue[JobEvent]":
        q: queue.SimpleQueue[JobEvent] = queue.SimpleQueue()
        with self._lock:
            self._subscribers.add(q)
        return q

    def unsubscribe(self, q: "queue.SimpleQueue[JobEvent]") -> None:
        with self._lock:
            self._subscribers.discard(q)

    def publish(self, events: list[JobEvent]) -> None:
        if not events:
            return
        with self._lock:
            subscribers = list(self._subscribers)
        for q in subscribers:
            for event in events:
                q.put(event)
