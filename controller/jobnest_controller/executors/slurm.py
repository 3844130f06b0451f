"""The Slurm executor: each run is a Slurm batch job, over Slurm's own commands (sbatch, squeue,
scancel, sinfo), as Snakemake, Nextflow and Parsl drive it.

Slurm's nodes share the controller's file system: a run's work dir, its inputs' trees and a
runner's program folder are paths there, and a small wrapper writes the run's output, its logs
and its exit code into the work dir (where a restarted controller finds them). A node that does
not see the work dir ends the job at once, and the run fails saying so. A job is named
`jobnest-RUN` and asks for the run's cpu share rounded up to whole CPUs (Slurm allocates no less)
and its memory.

Slurm is asked about all of this controller's jobs in one `squeue` (with the exit codes of those
just ended) at most every `POLL` seconds, never once per job; a run whose wrapper has recorded its
exit code needs no asking. Cancels go in one `scancel` per pass. A Slurm that does not answer
leaves its runs where they are, and new runs queued with the reason, until it answers again.
Capacity is one node per partition, from `sinfo`.
"""

import dataclasses
import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from jobnest.errors import InvalidSpec, JobnestError, Unavailable

from ..scheduler import Node
from ..settings import SlurmSettings
from .base import Exited, Launch, Started, expand

log = logging.getLogger(__name__)

POLL = 0.5  # seconds between status queries, whatever the number of jobs
CAPACITY_EVERY = 30.0  # seconds between `sinfo` queries
NOT_SHARED = 97  # the wrapper's exit code when the node does not see the run's work dir
# $1: the run's work dir, $2: the attempt, then the program and its arguments.
WRAPPER = f"""#!/bin/sh
w="$1"; a="$2"; shift 2
[ -d "$w" ] || exit {NOT_SHARED}
exec >>"$w/stdout.log" 2>>"$w/stderr.log"
echo $$ >"$w/pid.$a"
"$@"; code=$?; echo $code >"$w/exit_code.$a"; exit $code
"""
LIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STOPPED",
        "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
UNREACHABLE = ("Unable to contact slurm controller", "Connection refused", "Socket timed out",
               "Zero Bytes were transmitted", "Could not establish a configuration source")


class SlurmExecutor:
    name = "slurm"
    slow_starts = True  # each start is an sbatch call: on threads, several at once

    def __init__(self, root: str, settings: SlurmSettings) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.env = {**os.environ, **({"SLURM_CONF": settings.conf} if settings.conf else {})}
        self.notify = lambda: None
        self.queries = 0  # status queries (squeue) made, for the tests and the bench
        self._jobs: dict[str, tuple[str, str, str, int | None]] = {}  # job id -> (name, state, reason, exit)
        self._named: dict[str, str] = {}  # job name -> its newest job id
        self._asked = -math.inf  # when the last status query ran (monotonic); -inf: never
        self._answered = False  # whether it answered
        self._nodes: list[Node] = []
        self._capacity_asked = -math.inf
        self._why = ""
        self._cancel: dict[str, float] = {}  # job id -> when its scancel went
        (self.root / "slurm-wrapper.sh").write_text(WRAPPER)

    # -- Slurm's commands ---------------------------------------------------------------------

    def _slurm(self, *argv: str, env: dict[str, str] | None = None) -> str:
        """Run a Slurm command; Unavailable when the controller does not answer, JobnestError when
        it refuses."""
        try:
            done = subprocess.run(argv, env=env or self.env, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable(f"Slurm's {argv[0]} did not run: {e}") from e
        if done.returncode:
            said = (done.stderr.strip() or done.stdout.strip()).splitlines()
            message = said[-1] if said else f"exit code {done.returncode}"
            if any(words in done.stderr for words in UNREACHABLE):
                raise Unavailable(f"Slurm does not answer: {message}")
            raise JobnestError(f"{argv[0]}: {message}")
        return done.stdout

    def _refresh(self, now: float) -> None:
        """One `squeue` for all of this controller's jobs, at most every POLL seconds."""
        if now - self._asked < POLL:
            return
        self._asked = now
        self._send_cancels(now)
        self.queries += 1
        try:
            out = self._slurm("squeue", "--me", "--noheader", "--states=all",
                              "--Format=JobID:|,Name:|,State:|,Reason:|,exit_code:|")
        except (Unavailable, JobnestError) as e:
            if self._answered:
                log.warning("Slurm's status is unknown for now: %s", e)
            self._answered = False
            return
        self._answered = True
        jobs, named = {}, {}
        for line in out.splitlines():
            fields = line.split("|")
            if len(fields) < 5 or not fields[1].startswith("jobnest-"):
                continue
            job_id, name, state, reason, status = (f.strip() for f in fields[:5])
            jobs[job_id] = (name, state.split()[0], reason, int(status) if status.isdigit() else None)
            if int(job_id.split("_")[0]) > int(named.get(name, "0").split("_")[0]):
                named[name] = job_id
        self._jobs, self._named = jobs, named

    def _send_cancels(self, now: float) -> None:
        """One `scancel` for every job asked to stop since the last (again after a while for those
        still there)."""
        due = [job for job, sent in self._cancel.items() if sent == 0 or now - sent > 10]
        if not due:
            return
        try:
            self._slurm("scancel", *due)
        except (Unavailable, JobnestError) as e:
            log.warning("scancel of %d Slurm jobs failed: %s", len(due), e)
            return
        self._cancel.update(dict.fromkeys(due, now))

    # -- the executor interface ------------------------------------------------------------------

    def nodes(self) -> list[Node]:
        now = time.monotonic()
        if now - self._capacity_asked >= CAPACITY_EVERY or not self._nodes:
            self._capacity_asked = now
            try:
                self._nodes, self._why = self._capacity(), ""
            except (Unavailable, JobnestError) as e:
                self._nodes, self._why = [], f"waiting: Slurm does not answer ({e})"
        return [dataclasses.replace(n) for n in self._nodes]  # the scheduler charges what it is given

    def _capacity(self) -> list[Node]:
        """The partition as one node: the CPUs and memory of its nodes that take jobs."""
        out = self._slurm("sinfo", "--noheader", "--Node", f"--partition={self.settings.partition}",
                          "--format=%N|%c|%m|%t")
        cpus = memory = 0
        for line in sorted(set(out.splitlines())):
            name, node_cpus, node_memory, state = line.split("|")
            if state.rstrip("*~#!%$@^-") in ("idle", "mix", "alloc", "comp", "resv", "plnd"):
                cpus += int(node_cpus)
                memory += int(node_memory.rstrip("+")) * 2**20
        if not cpus:
            raise JobnestError(f"partition {self.settings.partition!r} has no node that takes jobs")
        return [Node(self.settings.partition, cpus * 1000, memory)]

    def tidy(self) -> None:
        pass

    def why_no_nodes(self) -> str:
        return self._why or f"waiting: Slurm partition {self.settings.partition!r} has no capacity"

    def resolve_image(self, image: str) -> str:
        if image:
            raise InvalidSpec("the Slurm executor runs programs on Slurm's nodes, in no image", field="image")
        return ""

    def workdir(self, run_uuid: str) -> str:
        return str(self.root / run_uuid)

    def start(self, launch: Launch) -> Started:
        workdir = Path(self.workdir(launch.run_uuid))
        out = workdir / "out"
        out.mkdir(parents=True, exist_ok=True)
        env = {**self.env, **launch.env, "JOBNEST_CONTROLLER": launch.controller, "JOBNEST_OUTPUT": str(out)}
        options = [f"--job-name=jobnest-{launch.run_uuid}", f"--partition={self.settings.partition}",
                   f"--cpus-per-task={max(1, math.ceil(launch.cpu_millis / 1000))}",
                   f"--chdir={launch.cwd or launch.program or out}", "--output=/dev/null", "--error=/dev/null",
                   "--export=ALL", "--parsable"]
        if launch.memory:
            options.append(f"--mem={max(1, math.ceil(launch.memory / 2**20))}M")
        argv = expand(launch.argv, launch.inputs, str(out))
        job_id = self._slurm("sbatch", *options, str(self.root / "slurm-wrapper.sh"), str(workdir),
                             str(launch.attempt), *argv, env=env).strip().split(";")[0]
        self._asked = -math.inf  # ask about it at the next pass
        return Started(pid=0, workdir=str(workdir), cpu_enforced=False, handle=job_id)

    def poll(self, run: dict[str, Any]) -> Exited | None:
        workdir = Path(run["workdir"] or self.workdir(run["uuid"]))
        code = _read_int(workdir / f"exit_code.{run['attempt']}")
        if code is not None:
            self._cancel.pop(run.get("handle") or "", None)
            return Exited(code, f"exit code {code}")
        self._refresh(time.monotonic())
        job_id = run.get("handle") or self._named.get(f"jobnest-{run['uuid']}", "")
        if not self._answered:
            return None  # nothing is known of it until Slurm answers
        if job_id not in self._jobs:
            if not job_id:
                return Exited(None, "the controller stopped before its Slurm job was submitted", started=False)
            return Exited(None, f"lost: Slurm job {job_id} ended without recording an exit code")
        _, state, reason, status = self._jobs[job_id]
        if state in LIVE:
            return None
        self._cancel.pop(job_id, None)
        if state == "OUT_OF_MEMORY":
            return Exited(None, "out of memory")
        if status is not None and status >> 8 == NOT_SHARED:
            return Exited(None, f"Slurm's node does not see {workdir}: its nodes must share the controller's "
                                "file system")
        if state == "CANCELLED":
            return Exited(None, "cancelled in Slurm" + (f" ({reason})" if reason not in ("None", "") else ""))
        if status is not None and status & 0x7F:
            return Exited(128 + (status & 0x7F), f"killed by signal {status & 0x7F}")
        return Exited(None, f"Slurm ended it: {state}" + (f" ({reason})" if reason not in ("None", "") else ""))

    def stop(self, run: dict[str, Any], now: float) -> None:
        job_id = run.get("handle") or self._named.get(f"jobnest-{run['uuid']}", "")
        if job_id:
            self._cancel.setdefault(job_id, 0)
            self._refresh(time.monotonic())

    def log_paths(self, run: dict[str, Any]) -> dict[str, str]:
        workdir = Path(run["workdir"] or self.workdir(run["uuid"]))
        return {"stdout": str(workdir / "stdout.log"), "stderr": str(workdir / "stderr.log")}

    def close(self) -> None:
        pass


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
