"""The local executor: each run is a process in its own session on this machine.

A small `sh` wrapper writes the program's exit code into the run's work dir, so a run that ends
while the controller is down still reports its real exit code when the controller comes back.
"""

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cgroups import CpuLimiter
from ..confine import Sandbox
from ..scheduler import THIS_MACHINE, Node
from .base import Exited, Launch, Started, expand

# $1: the run's work dir, $2: cgroup.procs file or "", $3: the attempt, then the program and its
# arguments. The shell opens the run's logs itself (which the controller's thread need not wait
# for); the attempt's pid file tells a restarted controller that it did start, its exit_code file
# how it ended. They are the attempt's own: a controller killed as a retry starts finds none of
# the attempt before.
LOGS = 'exec >>"$1/stdout.log" 2>>"$1/stderr.log"; '
WRAPPER = (LOGS + 'w="$1"; cg="$2"; a="$3"; shift 3; echo $$ >"$w/pid.$a"; for f in $cg; do echo $$ >"$f"; done; '
           '"$@"; code=$?; echo $code >"$w/exit_code.$a"; exit $code')
# A job that is itself `sh -c SCRIPT` runs in the wrapper's shell, which saves a shell per run: $4
# is the script, and the exit trap records how it ended, `exit N` included; the wrapper's own
# names are long, to stay clear of the script's. (A script that sets traps of its own gets the
# plain wrapper, which keeps them apart.)
INLINE = (LOGS + '__jobnest_w="$1/exit_code.$3"; echo $$ >"$1/pid.$3"; for __jobnest_f in $2; do echo $$ >"$__jobnest_f"; done; '
          '__jobnest_s="$4"; shift 4; trap \'echo $? >"$__jobnest_w"\' EXIT; eval "$__jobnest_s"')
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL


class LocalExecutor:
    name = "local"
    slow_starts = False

    def __init__(self, root: str, cpu_millis: int, memory: int, limiter: CpuLimiter | None = None,
                 sandbox: Sandbox | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.capacity = Node("local", cpu_millis, memory)
        self.limiter = limiter or CpuLimiter()
        self.sandbox = sandbox
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self.base_env = base_env()
        self._stopping: dict[str, float] = {}
        self.notify: Callable[[], None] = lambda: None  # unused: the controller hears SIGCHLD itself

    def nodes(self) -> list[Node]:
        return [Node(self.capacity.name, self.capacity.cpu_millis, self.capacity.memory,
                     cpu_enforced=self.limiter.available, machine=THIS_MACHINE)]

    def tidy(self) -> None:
        pass  # poll() cleans up after each run itself

    def why_no_nodes(self) -> str:
        return "waiting: the local node has no capacity"

    def resolve_image(self, image: str) -> str:
        return ""  # local runs are processes on this machine; an image is not used

    def workdir(self, run_uuid: str) -> str:
        return str(self.root / run_uuid)

    def start(self, launch: Launch) -> Started:
        workdir = self.workdir(launch.run_uuid)
        out = os.path.join(workdir, "out")
        for folder in (workdir, out):
            try:
                os.mkdir(folder)
            except FileExistsError:  # an earlier attempt's, or its program's
                pass
        cgroup_procs = self.limiter.create(launch.run_uuid, launch.cpu_millis)
        try:
            env = {**self.base_env, **launch.env, "JOBNEST_CONTROLLER": launch.controller, "JOBNEST_OUTPUT": out}
            argv = expand(launch.argv, launch.inputs, out)
            inline = len(argv) == 3 and argv[0] in ("sh", "/bin/sh") and argv[1] == "-c" and "trap" not in argv[2]
            command = ["/bin/sh", "-c", INLINE if inline else WRAPPER, "sh", workdir, cgroup_procs or "",
                       str(launch.attempt), *(argv[2:] if inline else argv)]
            cwd = launch.cwd or launch.program or out
            if self.sandbox is not None:
                command = self.sandbox.wrap(workdir, cwd, command)
            proc = subprocess.Popen(
                command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        except BaseException:
            self.limiter.remove(launch.run_uuid)
            raise
        self._children[proc.pid] = proc
        return Started(proc.pid, workdir, cgroup_procs is not None)

    def poll(self, run: dict[str, Any]) -> Exited | None:
        workdir = Path(run["workdir"] or self.workdir(run["uuid"]))
        pid = _pid_of(run, workdir)
        child = self._children.get(pid)
        if child is not None:
            if child.poll() is None:
                return None
            del self._children[pid]
        elif pid and _is_ours(pid, workdir):
            return None  # adopted after a restart and still running
        if (pid and _group_alive(pid)) or self.limiter.members(run["uuid"]):
            # The wrapper is gone but processes of the run live on: ones that ignore SIGTERM (the
            # reconciler keeps calling stop(), which escalates), or ones left in the background,
            # which end with the run, in its process group or (after setsid()) in its cgroup.
            # Until they are gone the run holds its cpu.
            if run["desired"] == "run":
                kill_group(pid, signal.SIGKILL)
                self.limiter.kill(run["uuid"], signal.SIGKILL)
            return None
        self._stopping.pop(run["uuid"], None)
        self.limiter.remove(run["uuid"])
        code = _read_int(workdir / f"exit_code.{run['attempt']}")
        if code is not None:
            return Exited(code, f"exit code {code}")
        if not pid:
            return Exited(None, "the controller stopped before the run started", started=False)
        if child is not None and child.returncode < 0:
            return Exited(128 - child.returncode, f"killed by signal {-child.returncode}")
        if child is not None:  # it ended before its wrapper could say how: the wrapper's code tells
            return Exited(child.returncode, f"exit code {child.returncode}")
        return Exited(None, "lost: the process ended without recording an exit code")

    def stop(self, run: dict[str, Any], now: float) -> None:
        first = self._stopping.setdefault(run["uuid"], now)
        sig = signal.SIGKILL if now - first >= KILL_GRACE else signal.SIGTERM
        workdir = Path(run["workdir"] or self.workdir(run["uuid"]))
        pid = _pid_of(run, workdir)
        if pid and (pid in self._children or _is_ours(pid, workdir) or _group_alive(pid)):
            kill_group(pid, sig)
        self.limiter.kill(run["uuid"], sig)  # those that left its process group too

    def close(self) -> None:
        pass  # its threads end with their runs' processes or containers

    def log_paths(self, run: dict[str, Any]) -> dict[str, str]:
        workdir = Path(run["workdir"] or self.workdir(run["uuid"]))
        return {"stdout": str(workdir / "stdout.log"), "stderr": str(workdir / "stderr.log")}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _is_ours(pid: int, workdir: Path) -> bool:
    """Whether `pid` is still the live wrapper of the run in `workdir` (pids get recycled)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat[stat.rindex(")") + 2]
    return state not in "ZX" and str(workdir).encode() in cmdline.split(b"\0")


def _pid_of(run: dict[str, Any], workdir: Path) -> int:
    """The run's wrapper's pid. None stored: the controller died starting it, maybe before the
    wrapper wrote its pid file."""
    return run["pid"] or _read_int(workdir / f"pid.{run['attempt']}") or _find_wrapper(workdir)


def _find_wrapper(workdir: Path) -> int:
    """The pid of a live process started for the run in `workdir` (its wrapper names it), or 0."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and _is_ours(int(entry.name), workdir):
            return int(entry.name)
    return 0


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def base_env() -> dict[str, str]:
    """What a job inherits from the controller's environment: enough to find programs."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "VIRTUAL_ENV", "PYTHONPATH")
    return {k: os.environ[k] for k in keep if k in os.environ}
