"""The Slurm executor: each run is a Slurm batch job, over Slurm's own commands (sbatch, squeue,
scancel, sinfo), as Snakemake, Nextflow and Parsl drive it.

Slurm's nodes share the controller's file system: a run's work dir, its inputs' trees and a
runner's program folder are paths there, and a small wrapper writes the run's output, its logs
and its exit code into the work dir (where a restarted controller finds them). A node that does
not see the work dir ends the job at once, and the run fails saying so. A run of whole cores is
a task of a job array, which gathers the runs of the same cpu (rounded up to whole CPUs) and
memory that start at the same time: one `sbatch` for them all. Slurm allocates no less than a
CPU, so runs smaller than a core go to blocks instead (`slurm_block.py`):
a Slurm job of `block_cpus` CPUs, made when no block has room and ended by itself once idle, that
runs several of them at once, each with its own cpu share. Runs in a block share its memory.

Slurm is asked about all of this controller's jobs in one `squeue` (with the exit codes of those
just ended) at most every `POLL` seconds, never once per job; a run whose wrapper has recorded its
exit code needs no asking. Cancels go in one `scancel` per pass. A Slurm that does not answer
leaves its runs where they are, and new runs queued with the reason, until it answers again.
Capacity is one node per partition, from `sinfo`.
"""

import dataclasses
import json
import logging
import math
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from jobnest.errors import InvalidSpec, JobnestError, Unavailable

from ..scheduler import Node
from ..settings import SlurmSettings
from .base import Exited, Launch, Started, expand
from .local import base_env
from .slurm_block import NOT_SHARED

log = logging.getLogger(__name__)

POLL = 0.5  # seconds between status queries, whatever the number of jobs
GATHER = 0.01  # seconds a start waits for the others of its pass to join its job array
CAPACITY_EVERY = 30.0  # seconds between `sinfo` queries
RETRY = 2.0  # seconds between them while Slurm does not answer
BLOCK = "block:"  # a run's handle when it runs in a block
# $1: the run's work dir, $2: the attempt, then the program and its arguments. A program killed
# while its memory cgroup (Slurm's, for the job) counts an OOM kill ran out of memory: "oom".
WRAPPER = """#!/bin/sh
w="$1"; a="$2"; shift 2
exec >>"$w/stdout.log" 2>>"$w/stderr.log"
echo $$ >"$w/pid.$a"
"$@"; code=$?
if [ $code -gt 128 ]; then
  v1=$(sed -n 's/^[0-9]*:memory:\\(..*\\)$/\\1/p' /proc/self/cgroup); v2=$(sed -n 's/^0::\\(..*\\)$/\\1/p' /proc/self/cgroup)
  { [ -n "$v1" ] && grep -qs '^oom_kill [1-9]' "/sys/fs/cgroup/memory$v1/memory.oom_control"; } ||
    { [ -n "$v2" ] && grep -qs '^oom_kill [1-9]' "/sys/fs/cgroup$v2/memory.events"; } && code=oom
fi
echo $code >"$w/exit_code.$a"; [ $code = oom ] && exit 137; exit $code
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
        self.env = {**os.environ, **({"SLURM_CONF": settings.conf} if settings.conf else {})}  # Slurm's commands
        self.base_env = base_env()
        self.notify = lambda: None
        self.queries = self.submits = 0  # status queries (squeue) and sbatch calls made: for the tests
        self._jobs: dict[str, tuple[str, str, int | None]] = {}  # job id (JOB_INDEX) -> (state, reason, status)
        self._asked = -math.inf  # when the last status query ran (monotonic); -inf: never
        self._answered = False  # whether it answered
        self._nodes: list[Node] = []
        self._capacity_asked = -math.inf
        self._why = ""
        self._cancel: dict[str, float] = {}  # job id -> when its scancel went
        self.blocks: dict[str, Block] = {}  # by id
        self._placed: dict[str, tuple[str, int]] = {}  # run -> (its block, its cpu)
        self._dropped: set[str] = set()  # runs cancelled before their block started them
        self._lock = threading.Lock()  # starts run on threads of the reconciler's
        self._submitted: dict[str, float] = {}  # job id -> when sbatch made it (a status after shows it)
        self._gathering: dict[tuple[int, int], Array] = {}  # (cpus, MiB) -> the array being gathered
        self._ended: dict[str, float] = {}  # job id -> when `tidy` first saw it ended
        (self.root / "slurm-wrapper.sh").write_text(WRAPPER)

    # -- Slurm's commands ---------------------------------------------------------------------

    def _slurm(self, *argv: str) -> str:
        """Run a Slurm command; Unavailable when the controller does not answer, JobnestError when
        it refuses."""
        try:
            done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=60)
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
            out = self._slurm("squeue", "--me", "--noheader", "--states=all", "--array",
                              "--Format=JobArrayID:|,Name:|,State:|,Reason:|,exit_code:|")
        except (Unavailable, JobnestError) as e:
            if self._answered:
                log.warning("Slurm's status is unknown for now: %s", e)
            self._answered = False
            return
        self._answered = True
        jobs = {}
        for line in out.splitlines():
            fields = line.split("|")
            if len(fields) < 5 or not fields[1].startswith("jobnest-"):
                continue
            job_id, _, state, reason, status = (f.strip() for f in fields[:5])
            jobs[job_id] = (state.split()[0], reason, int(status) if status.isdigit() else None)
        self._jobs = jobs
        self._submitted = {job: at for job, at in self._submitted.items() if at > now - 60}  # shown by now
        for block in self.blocks.values():  # one Slurm ended (idle, or cancelled) takes no more runs
            block.closed = block.closed or jobs.get(block.job_id, ("PENDING",))[0] not in LIVE
        # A closed block with no run left is forgotten (`_block` reads one back from its folder).
        self.blocks = {i: b for i, b in self.blocks.items() if not (b.closed and b.used <= 0)}

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
        if now - self._capacity_asked >= (CAPACITY_EVERY if self._nodes else RETRY):
            self._capacity_asked = now
            try:
                self._nodes, self._why = self._capacity(), ""
            except JobnestError as e:  # Unavailable too: it says Slurm does not answer
                self._nodes, self._why = [], f"waiting: {e}"
        return [dataclasses.replace(n) for n in self._nodes]  # the scheduler charges what it is given

    def _capacity(self) -> list[Node]:
        """The partition as one node: the CPUs and memory of its nodes that take jobs."""
        out = self._slurm("sinfo", "--noheader", "--Node", f"--partition={self.settings.partition}",
                          "--format=%N|%c|%m|%t")
        cpus = memory = 0
        for line in sorted(set(out.splitlines())):
            _, node_cpus, node_memory, state = line.split("|")
            if state.rstrip("*~#!%$@^-") in ("idle", "mix", "alloc", "comp", "resv", "plnd"):
                cpus += int(node_cpus)
                memory += int(node_memory.rstrip("+")) * 2**20
        if not cpus:
            raise JobnestError(f"Slurm partition {self.settings.partition!r} has no node that takes jobs")
        return [Node(self.settings.partition, cpus * 1000, memory)]

    def tidy(self) -> None:
        """Remove the folders of arrays and blocks (their tickets hold the runs' tokens) whose
        Slurm job was seen ended over two status queries ago: their runs have been told by then."""
        now = time.monotonic()
        self._refresh(now)
        if not self._answered:
            return
        live = {job.split("_")[0] for job, (state, _, _) in self._jobs.items() if state in LIVE}
        live |= {job for job, at in self._submitted.items() if at >= self._asked}  # not in a status yet
        ended = {}
        for folder in [*self.root.glob("arrays/*"), *self.root.glob("blocks/*")]:
            job_id = _read(folder / "job")
            if not job_id or job_id in live or folder.name in self.blocks:
                continue
            ended[job_id] = seen = self._ended.get(job_id, now)
            if now - seen > 2 * POLL:
                shutil.rmtree(folder, ignore_errors=True)
                del ended[job_id]
        self._ended = ended

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
        # What it runs, in a block or as a task of an array: the variables a local run gets.
        ticket = {"argv": expand(launch.argv, launch.inputs, str(out)), "cwd": launch.cwd or launch.program or str(out),
                  "env": {**self.base_env, **launch.env, "JOBNEST_CONTROLLER": launch.controller,
                          "JOBNEST_OUTPUT": str(out)},
                  "workdir": str(workdir), "attempt": launch.attempt, "cpu_millis": launch.cpu_millis}
        if launch.cpu_millis < 1000:
            handle = BLOCK + self._hand_over(launch.run_uuid, ticket)
        else:
            handle = self._in_array((math.ceil(launch.cpu_millis / 1000), math.ceil(launch.memory / 2**20)), ticket)
        (workdir / "handle").write_text(handle)  # for a controller killed before it stored the start
        return Started(pid=0, workdir=str(workdir), cpu_enforced=False, handle=handle)

    def _in_array(self, shape: tuple[int, int], ticket: dict[str, Any]) -> str:
        """Submit a run of whole cores; those that start at the same time with the same cpu and
        memory go as one job array. Returns the task's id (`JOB_INDEX`)."""
        with self._lock:
            array = self._gathering.get(shape)
            leader = array is None
            if array is None:
                array = self._gathering[shape] = Array()
            index = len(array.tickets)
            array.tickets.append(ticket)
        if leader:
            time.sleep(GATHER)  # the other starts of this pass join it
            with self._lock:
                del self._gathering[shape]
            try:
                array.job_id = self._submit_array(shape, array.tickets)
            except Exception as e:  # every run of it fails (or waits) the same way
                array.error = e
            array.done.set()
        array.done.wait()
        if array.error is not None:
            raise array.error
        return f"{array.job_id}_{index}"

    def _submit_array(self, shape: tuple[int, int], tickets: list[dict[str, Any]]) -> str:
        folder = self.root / "arrays" / secrets.token_hex(6)
        folder.mkdir(parents=True)
        for index, ticket in enumerate(tickets):
            _write_ticket(folder / f"{index}.json", ticket)
        task = [sys.executable, "-m", "jobnest_controller.executors.slurm_block", "--task", str(folder),
                str(self.root / "slurm-wrapper.sh")]
        cpus, memory = shape
        return self._sbatch(folder, task, f"--job-name=jobnest-array-{folder.name}", f"--array=0-{len(tickets) - 1}",
                            f"--cpus-per-task={cpus}", *([f"--mem={memory}M"] if memory else []))

    def _sbatch(self, folder: Path, command: list[str], *argv: str, log: str = "/dev/null") -> str:
        """Submit `command` to run in `folder` with its output to `log` there; on a node that does
        not see the folder it ends at once (NOT_SHARED). Slurm itself would hold such a job."""
        self.submits += 1
        wrap = f"[ -d {shlex.quote(str(folder))} ] || exit {NOT_SHARED}; exec {shlex.join(command)} >>{log} 2>&1"
        job_id = self._slurm("sbatch", "--parsable", "--export=ALL", f"--partition={self.settings.partition}",
                             f"--chdir={folder}", "--output=/dev/null", "--error=/dev/null", *argv,
                             "--wrap", wrap).strip().split(";")[0]
        self._submitted[job_id] = time.monotonic()  # not in a status older than this
        (folder / "job").write_text(job_id)  # its folder goes once it ended (`tidy`)
        return job_id

    # -- blocks: runs smaller than a core, several in one allocation ------------------------------

    def _hand_over(self, run_uuid: str, ticket: dict[str, Any]) -> str:
        """Put the run in a block with room for it (a new one if none has); returns the block's id."""
        with self._lock:
            while True:
                block = next((b for b in self.blocks.values()
                              if not b.closed and b.cpu_millis - b.used >= ticket["cpu_millis"]), None) \
                    or self._new_block()
                tmp = block.folder / f"{run_uuid}.tmp"
                _write_ticket(tmp, ticket)
                try:
                    os.rename(tmp, block.folder / "inbox" / f"{run_uuid}.json")
                except FileNotFoundError:  # the block closed its inbox meanwhile
                    tmp.unlink()
                    block.closed = True
                    continue
                block.used += ticket["cpu_millis"]
                self._placed[run_uuid] = (block.id, ticket["cpu_millis"])
                return block.id

    def _new_block(self) -> "Block":
        block_id = secrets.token_hex(6)
        folder = self.root / "blocks" / block_id
        (folder / "inbox").mkdir(parents=True)
        agent = [sys.executable, "-m", "jobnest_controller.executors.slurm_block", str(folder),
                 str(self.settings.block_idle)]
        job_id = self._sbatch(folder, agent, f"--job-name=jobnest-block-{block_id}",
                              f"--cpus-per-task={self.settings.block_cpus}", log="block.log")
        block = self.blocks[block_id] = Block(block_id, folder, job_id, self.settings.block_cpus * 1000)
        return block

    def _block(self, block_id: str) -> "Block":
        """A block by id; one made before a restart is read back, closed to new runs."""
        if block_id not in self.blocks:
            folder = self.root / "blocks" / block_id
            self.blocks[block_id] = Block(block_id, folder, _read(folder / "job"), 0, closed=True)
        return self.blocks[block_id]

    def _release(self, run_uuid: str) -> None:
        block_id, cpu = self._placed.pop(run_uuid, ("", 0))
        if block_id in self.blocks:
            self.blocks[block_id].used -= cpu

    def _poll_in_block(self, run: dict[str, Any], block: "Block") -> Exited | None:
        if run["uuid"] in self._dropped:
            self._dropped.discard(run["uuid"])
            return Exited(None, "cancelled before its block started it")
        self._refresh(time.monotonic())
        if not self._answered:
            return None
        if block.job_id not in self._jobs and self._submitted.get(block.job_id, -math.inf) >= self._asked:
            return None  # submitted since Slurm was last asked
        state, _, status = self._jobs.get(block.job_id, ("", "", None))
        if state in LIVE:
            return None
        block.closed = True
        self._release(run["uuid"])
        if status is not None and status >> 8 == NOT_SHARED:
            return _not_shared(block.folder)
        if any((block.folder / box / f"{run['uuid']}.json").exists() for box in ("inbox", "closed")):
            return Exited(None, f"its block (Slurm job {block.job_id}) ended before starting it", started=False)
        return Exited(None, f"lost: its block (Slurm job {block.job_id}) ended {state or 'unseen'} before the run "
                            "recorded an exit code")

    # -- the executor interface, continued ------------------------------------------------------

    def poll(self, run: dict[str, Any]) -> Exited | None:
        workdir = Path(run["workdir"] or self.workdir(run["uuid"]))
        handle = run.get("handle") or _read(workdir / "handle")  # the file: a start the store missed
        said = _read(workdir / f"exit_code.{run['attempt']}")
        if said:
            self._cancel.pop(handle, None)
            self._release(run["uuid"])
            return Exited(None, "out of memory") if said == "oom" else Exited(int(said), f"exit code {said}")
        if handle.startswith(BLOCK):
            return self._poll_in_block(run, self._block(handle.removeprefix(BLOCK)))
        self._refresh(time.monotonic())
        job_id = handle
        if not self._answered:
            return None  # nothing is known of it until Slurm answers
        if job_id not in self._jobs:
            if not job_id:
                return Exited(None, "the controller stopped before its Slurm job was submitted", started=False)
            if self._submitted.get(job_id.split("_")[0], -math.inf) >= self._asked:
                return None  # submitted since Slurm was last asked
            return Exited(None, f"lost: Slurm job {job_id} ended without recording an exit code")
        state, reason, status = self._jobs[job_id]
        if state in LIVE:
            return None
        self._cancel.pop(job_id, None)
        if state == "OUT_OF_MEMORY":
            return Exited(None, "out of memory")
        if status is not None and status >> 8 == NOT_SHARED:
            return _not_shared(workdir)
        if state == "CANCELLED":
            return Exited(None, "cancelled in Slurm" + (f" ({reason})" if reason not in ("None", "") else ""))
        if status is not None and status & 0x7F:
            return Exited(128 + (status & 0x7F), f"killed by signal {status & 0x7F}")
        return Exited(None, f"Slurm ended it: {state}" + (f" ({reason})" if reason not in ("None", "") else ""))

    def stop(self, run: dict[str, Any], now: float) -> None:
        workdir = Path(run["workdir"] or self.workdir(run["uuid"]))
        handle = run.get("handle") or _read(workdir / "handle")
        if handle.startswith(BLOCK):
            block = self._block(handle.removeprefix(BLOCK))
            try:
                os.unlink(block.folder / "inbox" / f"{run['uuid']}.json")  # not started yet: it never will
                self._dropped.add(run["uuid"])
                self._release(run["uuid"])
            except FileNotFoundError:
                (workdir / f"cancel.{run['attempt']}").touch()  # the block stops it
            return
        if handle:
            self._cancel.setdefault(handle, 0)
            self._refresh(time.monotonic())

    def log_paths(self, run: dict[str, Any]) -> dict[str, str]:
        workdir = Path(run["workdir"] or self.workdir(run["uuid"]))
        return {"stdout": str(workdir / "stdout.log"), "stderr": str(workdir / "stderr.log")}

    def close(self) -> None:
        pass


@dataclasses.dataclass
class Array:
    """Whole-core runs gathered into one `sbatch --array`, and how its submit went."""
    tickets: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    job_id: str = ""
    error: Exception | None = None


@dataclasses.dataclass
class Block:
    id: str
    folder: Path
    job_id: str
    cpu_millis: int
    used: int = 0  # the cpu of its runs still going
    closed: bool = False  # takes no more runs


def _write_ticket(path: Path, ticket: dict[str, Any]) -> None:
    """A run's ticket, readable by this user only: it holds the run's token."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(ticket, f)


def _not_shared(path: Path) -> Exited:
    return Exited(None, f"Slurm's node does not see {path}: its nodes must share the controller's file system")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


