"""Job and run states, listed once, and the only transitions allowed between them.

`store.transition()` is the one place that changes a state; it consults `ALLOWED` here.
"""

from enum import Enum


class Kind(str, Enum):
    """What a transition moves: a job (on its own, apart from its run) or a run (and its jobs)."""

    JOB = "job"
    RUN = "run"


class State(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
LIVE = frozenset(State) - TERMINAL

ALLOWED: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.FAILED, State.CANCELLED}),
    # running -> queued: the controller died after claiming a run but before starting it
    State.RUNNING: frozenset({State.QUEUED, State.SUCCEEDED, State.FAILED, State.CANCELLED}),
    State.SUCCEEDED: frozenset(),
    State.FAILED: frozenset(),
    State.CANCELLED: frozenset(),
}

# Reuse prefers a finished result, then work still in flight; never a failure.
REUSABLE = (State.SUCCEEDED, State.RUNNING, State.QUEUED)
