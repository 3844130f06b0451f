"""The interface every executor implements, and what it reports back to the reconciler."""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..scheduler import Node


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything an executor needs to start one run."""

    run_uuid: str
    node: str
    argv: list[str]
    env: dict[str, str]  # the job's env plus JOBNEST_TOKEN, JOBNEST_JOB and JOBNEST_RUN
    cwd: str
    cpu_millis: int
    memory: int
    controller: str  # the controller's address for jobs; each executor sets JOBNEST_CONTROLLER
    image: str = ""  # for container executors: the image's content id
    program: str = ""  # a runner's unpacked program folder, to be its working directory
    inputs: dict[str, str] = field(default_factory=dict)  # name -> its data: a read-only folder or file
    attempt: int = 1  # a failed run's retries are attempts 2, 3, ...
    mount_cwd: bool = False  # container executors: mount cwd, a folder of this machine, at the same path
    mount_root: str = ""  # the allowed folder (`confine`) it must still lie under


PLACEHOLDER = re.compile(r"(?<!\$)\{(output|inputs\.[A-Za-z_][A-Za-z0-9_]*)\}")


def expand(argv: list[str], inputs: dict[str, str], output: str) -> list[str]:
    """argv with `{inputs.NAME}` and `{output}` replaced by the paths the job sees; `${output}`
    is left alone for the shell."""
    paths = {"output": output, **{f"inputs.{name}": path for name, path in inputs.items()}}
    return [PLACEHOLDER.sub(lambda m: paths.get(m[1], m[0]), arg) for arg in argv]


@dataclass(frozen=True, slots=True)
class Started:
    pid: int
    workdir: str
    cpu_enforced: bool
    handle: str = ""  # the executor's own name for it, such as a container id


@dataclass(frozen=True, slots=True)
class Exited:
    exit_code: int | None  # None when it could not be known
    reason: str
    started: bool = True  # False: it never started, and may be queued again


class Executor(Protocol):
    name: str
    # Whether start() mostly waits on an engine (a container, a Pod): the reconciler then calls it
    # on threads of its own, several at once; else (a process forked here) right after the claim.
    slow_starts: bool
    notify: Callable[[], None]  # set by the controller: call it when a run may have ended

    def nodes(self) -> list[Node]:
        """The nodes this executor places runs on, with their capacity."""

    def tidy(self) -> None:
        """Called once the ends that poll() reported are stored: remove what the runs left."""

    def why_no_nodes(self) -> str:
        """Why `nodes()` came back empty, for the runs that wait on this executor."""

    def resolve_image(self, image: str) -> str:
        """The content id of `image` for the signature ("" if this executor runs no images);
        raises InvalidSpec when no node has it."""

    def workdir(self, run_uuid: str) -> str:
        """Where a run's output and logs live; known before the run starts."""

    def start(self, launch: Launch) -> Started:
        """Start a run; raises `jobnest.errors.Unavailable` when its node cannot be reached (the
        run then waits in the queue again), anything else when it cannot start at all."""

    def poll(self, run: dict[str, Any]) -> Exited | None:
        """None while the run goes on. Works for runs started before a controller restart."""

    def stop(self, run: dict[str, Any], now: float) -> None:
        """Ask a run to stop; called each tick until `poll` reports it gone, so it may escalate."""

    def log_paths(self, run: dict[str, Any]) -> dict[str, str]:
        """stream name -> file path of a run's logs."""

    def close(self) -> None:
        """The controller stops: end any threads of the executor's own (runs go on)."""
