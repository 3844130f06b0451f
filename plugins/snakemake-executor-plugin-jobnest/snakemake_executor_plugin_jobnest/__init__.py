"""Snakemake's executor plugin for jobnest: `snakemake --executor jobnest -j 100`.

Snakemake finds it by its package name. Every rule instance Snakemake decides to run becomes a
jobnest job, a child of one driver job named after the run (`snakemake:FOLDER`), so `jobnest tree`
and the web monitor show the run as one tree. Jobs run in the workflow folder (a shared file
system: the local executor, or a container executor mounting the folder at the same path).

- **Submit**: all jobs Snakemake has ready go in one batch. A plain shell rule (no script, run
  block, benchmark, shadow, conda or group) on the local or Docker executor runs its shell
  command itself, so a tiny rule costs a process, not a Python start; any other rule, and any
  rule on Slurm (whose nodes may see the inputs late), runs `python -m snakemake` for that one
  job, as every remote executor does (in a container, the image then needs Snakemake).
- **State**: one Watch stream on the run's tree tells when a job ends; Snakemake's status loop
  wakes on it and asks the controller nothing.
- **Resources**: threads x `--jobnest-cpu-per-thread` (1) is the job's share of a core; `mem_mb`
  (else `mem_mib`) its memory.
- **Image**: `--jobnest-image`, else Snakemake's `--container-image` (its default: Snakemake's
  own image) on a container executor (`--jobnest-executor docker` or `kubernetes`); the local
  and Slurm executors take none.
- **Restart**: Snakemake keeps no record of the jobs it submitted. Each job carries a label with
  its key (folder, rule, outputs, and a plain shell rule's command); a run started again in the
  same folder first looks for jobs of its earlier runs still queued or running under that key,
  and follows those instead of submitting them again; one for the same outputs whose rule has
  changed is cancelled. After `kill -9`, Snakemake needs `--unlock` and then
  `--rerun-incomplete`, as on any executor.
- **Errors** report the job's state, reason and the end of its stderr.
- **Cancel** (Ctrl-C): one call cancels the run's whole tree.

Rerunning never reuses an earlier run by signature: Snakemake asks for a job because its outputs
are missing or stale, and a reused run would not write them again.
"""

import asyncio
import hashlib
import os
import shutil
import threading
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import jobnest
from jobnest.errors import JobnestError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake.shell import shell
from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecutorSettingsBase

KEY_LABEL = "snakemake.key"  # the job: its outputs and command
PLACE_LABEL = "snakemake.outputs"  # its outputs only
THREAD_VARIABLES = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")  # what Snakemake's shell() sets
CONTAINERS = ("docker", "kubernetes")  # the executors that run jobs in an image
LIVE = ["queued", "running"]
ENDED = ("succeeded", "failed", "cancelled")
STDERR_TAIL = 2000  # bytes of a failed job's stderr shown with its error
EARLIER_RUNS = 20  # earlier runs in this folder looked through for jobs still going


@dataclass(frozen=True)
class Ended:
    state: str
    exit_code: Optional[int]
    reason: str


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    executor: Optional[str] = field(default=None, metadata={
        "help": "jobnest executor to run on (local, docker, slurm, kubernetes); default: the controller's"})
    image: Optional[str] = field(default=None, metadata={
        "help": "image to run jobs in on a container executor (default: Snakemake's --container-image)"})
    cpu_per_thread: float = field(default=1.0, metadata={
        "help": "share of a core each of a job's threads gets (0.25: four threads per core)"})


common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    pass_envvar_declarations_to_cmd=False,  # `envvars:` go in the job's env, not its stored argv
    auto_deploy_default_storage_provider=False,
    init_seconds_before_status_checks=0,
)


class Executor(RemoteExecutor):
    # Snakemake's status loop starts before `__post_init__`: it finds these unset.
    wake: Optional[asyncio.Event] = None
    loop: Optional[asyncio.AbstractEventLoop] = None

    def __post_init__(self) -> None:
        settings = self.workflow.executor_settings
        self.options = settings if settings is not None else ExecutorSettings()
        if not self.options.cpu_per_thread > 0:
            raise jobnest.InvalidSpec("must be above 0", field="jobnest-cpu-per-thread")
        self.folder = Path.cwd()
        self.client = jobnest.connect()
        self.run_name = f"snakemake:{self.folder.name}"[:200]
        driver = self.client.record_driver(self.run_name)
        self.top = driver.uuid if driver is not None else os.environ["JOBNEST_JOB"]
        self.ended: dict[str, Ended] = {}  # uuid -> how it ended, until Snakemake is told
        self.following: set[str] = set()  # jobs this run waits for
        self.guard = threading.Lock()
        self.earlier, self.stale = self._still_going()
        self.earlier_uuids = set(self.earlier.values())
        self.stream: Any = None
        self.stopping = False
        threading.Thread(target=self._watch, name="jobnest-watch", daemon=True).start()

    # -- submitting ----------------------------------------------------------------------------

    def run_job(self, job: JobExecutorInterface) -> None:
        self.run_jobs([job])

    def run_jobs(self, jobs: list[JobExecutorInterface]) -> None:
        """All of them in one request, but those an earlier run still has going."""
        new: list[tuple[JobExecutorInterface, Any]] = []
        for job in jobs:
            self.run_job_pre(job)
            direct = self._direct(job)
            argv = self._argv(job, direct)
            place, key = self._key(job), self._key(job, argv if direct else [])
            stale = self.stale.pop(place, None)
            if key in self.earlier:
                uuid = self.earlier.pop(key)
                self.logger.info(f"jobnest: job {uuid} of an earlier run is still going; following it")
                self._follow(SubmittedJobInfo(job, external_jobid=uuid))
            else:
                if stale is not None:  # it would write the same outputs
                    self._cancel_stale(stale)
                if direct:  # what Snakemake would do around the command: make folders, clear outputs
                    self.workflow.async_run(job.prepare())
                new.append((job, self._spec(job, argv, direct, {KEY_LABEL: key, PLACE_LABEL: place})))
        if new:
            try:
                submitted = self.client.submit_many([spec for _, spec in new])
            except JobnestError as e:  # nothing of the batch is stored
                names = ", ".join(sorted({job.name for job, _ in new}))
                raise WorkflowError(f"jobnest refused the jobs of {names[:200]}: {e}") from None
            for (job, _), handle in zip(new, submitted):
                self._follow(SubmittedJobInfo(job, external_jobid=handle.uuid))

    def _cancel_stale(self, uuid: str) -> None:
        self.logger.info(f"jobnest: cancelling job {uuid} of an earlier run: its rule has changed since")
        try:
            self.client.cancel(uuid, reason="its Snakemake rule changed; a later run runs it again")
        except JobnestError as e:  # it ended meanwhile, say
            self.logger.warning(f"jobnest: could not cancel {uuid}: {e}")

    def _follow(self, info: SubmittedJobInfo) -> None:
        with self.guard:
            self.following.add(info.external_jobid)
        if info.external_jobid in self.earlier_uuids:
            self._restart_watch()  # the watch covers this run's tree; an earlier job is outside it
        self.report_job_submission(info)

    def _image(self) -> str:
        return self.options.image or (self.workflow.remote_execution_settings.container_image
                                      if self.options.executor in CONTAINERS else "") or ""

    def _spec(self, job: JobExecutorInterface, argv: list[str], direct: bool, labels: dict[str, str]) -> Any:
        image, resources = self._image(), job.resources
        memory = resources.get("mem_mb", 0) * 10**6 or resources.get("mem_mib", 0) * 2**20  # each made from the other
        wildcards: dict[str, str] = {}
        for one in (job.jobs if job.is_group() else [job]):  # a group's rules mostly share them
            wildcards.update(one.wildcards)
        name = job.name + (f"[{','.join(f'{k}={v}' for k, v in wildcards.items())}]" if wildcards else "")
        # the thread variables are what Snakemake's shell() sets; Snakemake run for a job sets them itself
        threads = dict.fromkeys(THREAD_VARIABLES, str(job.threads)) if direct else {}
        env = {**threads, **self.envvars()}
        return self.client.spec(
            argv, name=name[:200], cwd=str(self.folder), image=image or None, executor=self.options.executor,
            cpu=max(job.threads, 1) * self.options.cpu_per_thread, memory=int(memory), env=env, reuse=False,
            labels=labels, mount_cwd=bool(image))

    def _direct(self, job: JobExecutorInterface) -> bool:
        """Whether the job runs its shell command itself: a plain shell rule, on this host's file
        system (on Slurm's nodes, Snakemake run for the job first waits for its inputs to appear)."""
        return self.options.executor not in ("slurm", "kubernetes") and _plain_shell(job)

    def _argv(self, job: JobExecutorInterface, direct: bool) -> list[str]:
        """A plain shell rule's own command, with the Snakefile's `shell.prefix` and `shell.suffix`
        (else Snakemake's default for bash), else Snakemake run again for this one job."""
        if not direct:
            return ["sh", "-c", self.format_job_exec(job)]
        if self._image():  # an image may have no bash
            program, default = "sh", "set -eu; "
        else:
            program = shell.get_executable() or shutil.which("bash") or "sh"
            default = "set -euo pipefail; " if Path(program).name == "bash" else ""  # as Snakemake does
        prefix = default if shell._process_prefix is None else shell._process_prefix  # the Snakefile's
        return [program, "-c", f"{prefix}{job.shellcmd}{shell._process_suffix}"]

    def _key(self, job: JobExecutorInterface, command: Sequence[str] = ()) -> str:
        """Names a job across runs of the workflow in this folder: the same outputs (by the same
        command, when given: a rule edited since is not the job an earlier run has going)."""
        parts = [str(self.folder), job.name, *sorted(map(str, job.output)), *command]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]

    def _still_going(self) -> tuple[dict[str, str], dict[str, str]]:
        """For the jobs that earlier runs in this folder submitted and that still run: key -> job,
        and outputs -> job (to cancel one whose rule has changed, if they are asked for again)."""
        going: dict[str, str] = {}
        places: dict[str, str] = {}
        try:
            earlier = list(self.client.list(roots=True, name=self.run_name, newest_first=True, limit=EARLIER_RUNS))
            for run in earlier:
                if run.uuid == self.top or self.client.get(run.uuid).spec.get("cwd") != str(self.folder):
                    continue
                for info in self.client.list(parent=run.uuid, states=LIVE):
                    labels = (self.client.get(info.uuid).spec or {}).get("labels", {})
                    if KEY_LABEL in labels:
                        going.setdefault(labels[KEY_LABEL], info.uuid)
                        places.setdefault(labels.get(PLACE_LABEL, ""), info.uuid)
        except JobnestError as e:
            self.logger.warning(f"jobnest: could not look for jobs of earlier runs ({e}); none followed")
        return going, places

    # -- following -----------------------------------------------------------------------------

    def _watch(self) -> None:
        """One stream for the run: its tree, plus the earlier runs' jobs it follows. Begun again
        (with what it follows, whose first events give their states) if it breaks or must widen."""
        while not self.stopping:
            with self.guard:
                outside = sorted(u for u in self.following if u in self.earlier_uuids and u not in self.ended)
                self.stream = self.client.watch(subtree=self.top, uuids=outside)
                stream = self.stream
            try:
                for n, event in enumerate(stream):
                    if event.state in ENDED and event.uuid != self.top:
                        self.ended[event.uuid] = Ended(event.state, event.exit_code if event.has_exit_code else None,
                                                       event.reason)
                        self._wake()
                    if n == 0:  # subscribed: what ended before then, the stream does not tell again
                        self._catch_up()
            except JobnestError as e:
                if not self.stopping:
                    self.logger.warning(f"jobnest: watch broke ({e}); watching again")
                    threading.Event().wait(1.0)

    def _catch_up(self) -> None:
        for info in self.client.list(subtree=self.top, states=list(ENDED)):
            if info.uuid in self.following and info.uuid not in self.ended:
                self.ended[info.uuid] = Ended(info.state, info.exit_code, info.reason)
                self._wake()

    def _restart_watch(self) -> None:
        with self.guard:
            if self.stream is not None:
                self.stream.cancel()

    def _wake(self) -> None:
        if self.loop is not None and self.wake is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.wake.set)

    async def sleep(self) -> None:
        """Until a job ends (the watch says so), or the usual pause at the most."""
        if self.wake is None:
            self.loop, self.wake = asyncio.get_running_loop(), asyncio.Event()
        pause = self.workflow.remote_execution_settings.seconds_between_status_checks
        try:
            await asyncio.wait_for(self.wake.wait(), pause)
        except asyncio.TimeoutError:
            pass
        self.wake.clear()

    async def check_active_jobs(self, active_jobs: list[SubmittedJobInfo]) -> AsyncGenerator[SubmittedJobInfo, None]:
        if self.wake is None:
            self.loop, self.wake = asyncio.get_running_loop(), asyncio.Event()
        for info in active_jobs:
            ended = self.ended.pop(info.external_jobid, None)
            if ended is None:
                yield info
                continue
            with self.guard:
                self.following.discard(info.external_jobid)
            if ended.state == "succeeded":
                self.report_job_success(info)
            else:
                self.report_job_error(info, msg=self._failure(info.external_jobid, ended))

    def _failure(self, uuid: str, event: Ended) -> str:
        code = f" with exit code {event.exit_code}" if event.exit_code is not None else ""
        try:
            shown = self.client.log_tail(uuid, size=STDERR_TAIL).rstrip()
        except JobnestError:
            shown = ""
        return (f"jobnest job {uuid} {event.state}{code}: {event.reason or 'no reason given'}\n"
                + (f"its stderr ends:\n{shown}\n" if shown else "") + f"(jobnest logs {uuid}) ")

    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]) -> None:
        """One call for the run's tree; earlier runs' jobs it followed one by one."""
        mine = [i.external_jobid for i in active_jobs if i.external_jobid in self.earlier_uuids
                or self.client.driver is None]
        for uuid in ([self.top] if self.client.driver is not None else []) + mine:
            try:
                self.client.cancel(uuid, reason="the Snakemake run was cancelled")
            except JobnestError as e:  # ended meanwhile, say: cancel the rest still
                self.logger.warning(f"jobnest: could not cancel {uuid}: {e}")

    def shutdown(self) -> None:
        self.stopping = True
        self._restart_watch()
        with self.lock:
            self.wait = False
        self._wake()  # the status loop sleeps until a job ends: now it ends instead
        super().shutdown()  # the driver job ends with the program, with its exit code


def _plain_shell(job: JobExecutorInterface) -> bool:
    """A rule whose shell command is all there is to it: no script, run block, benchmark,
    shadow folder, software environment, group, other shell (`shell_exec`) or resource left for
    the job to resolve (`tmpdir`): those need Snakemake around the command."""
    real: Any = job
    return (not job.is_group() and real.is_shell and not real.benchmark and not real.shadow_dir
            and "<TBD>" not in real.shellcmd and not real.resources.get("shell_exec")
            and not getattr(real.rule, "shadow_depth", None) and not real.conda_env_spec
            and not real.container_img_url and not real.is_pipe and not real.is_service
            and not getattr(real.rule, "env_modules", None))

