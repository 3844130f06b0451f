"""`jobnest-cwl`: a CWL runner that runs each CommandLineTool step as a jobnest job.

    jobnest-cwl [cwltool options] workflow.cwl job.yml

It is cwltool (the reference runner) with its extension hooks filled in, as arvados-cwl-runner
is built: cwltool loads and validates the workflow, evaluates expressions, decides which steps are
ready (with `--parallel`, every ready step at once) and collects outputs; `JobnestTool` makes
each step a `JobnestJob`, which submits it through the SDK and waits for it. ExpressionTool steps
and `valueFrom` expressions still run inside this program, as cwltool runs them. The steps of a run
group under one driver job (named `cwl <workflow>`); run as a jobnest job itself (`JOBNEST_JOB`
set), they become that job's children.

How a step becomes a job:
- argv: the step's command line, run by `/bin/sh -c WRAPPER sh ARGV...`, where the wrapper enters
  the job's output folder (`$JOBNEST_OUTPUT`), sets `HOME` to it and `TMPDIR` to /tmp, copies the
  InitialWorkDirRequirement files in, and applies `stdin`/`stdout`/`stderr`. Images therefore need
  a `/bin/sh`.
- cpu and memory: `builder.resources` (ResourceRequirement's coresMin, fractional allowed, and
  ramMin MiB as bytes, or cwltool's defaults of 1 core and 256 MiB); env: EnvVarRequirement (and
  `--preserve-environment`); timeout: ToolTimeLimit; `WorkReuse: {enableReuse: false}` -> reuse off.
- DockerRequirement (dockerPull, else dockerImageId): the image; the controller picks its container
  executor (docker before kubernetes). No DockerRequirement, or `--no-container`: the local
  executor, no image. `--default-container IMAGE` works as in cwltool. `--jobnest-executor NAME`
  (jobnest-cwl's own option) sends every step to that executor (`slurm`, say).
- The job is named after the step (`uniquename`: `step`, `step_2` for a scatter's second).
- Exit code: success, temporaryFail or permanentFail by successCodes, temporaryFailCodes and
  permanentFailCodes as cwltool decides. A non-zero success code is turned into 0 by the wrapper
  (a failed jobnest run keeps no output), which writes the real code to `.jobnest-cwl-exit-code`.
  A failed step logs its jobnest reason and the tail of its stderr; the workflow exits non-zero.

The path scheme: no shared filesystem is assumed, so the local and the container executors are
treated alike, through jobnest's data. cwltool is told, as it is for a container, that the tool
sees its output folder at /jobnest-cwl/outdir and its inputs under /jobnest-cwl/stage; an input's
path there is /jobnest-cwl/stage/N/BASENAME (N: the input's position among the step's files, so a
rerun names them the same; secondaryFiles sit beside their primary). In the job's argv these
prefixes become the placeholders `{output}` and `{inputs.stage}`, which the controller replaces
with the paths the job really sees (in argv only, not in env). Before submitting, the step's files
are hard-linked (else copied) into a local folder in that layout, uploaded as the job's one input
`stage` (content-addressed: only what the controller lacks is sent); the InitialWorkDirRequirement
listing is laid out the same way as input `workdir`, which the wrapper copies into the output
folder. On success the job's output is downloaded into a local output folder for the step, where
cwltool's globbing, checksums and `cwl.output.json` (its real paths mapped back) work as usual.
Since argv and input digests are all a step's signature holds, rerunning a workflow on the same
inputs reuses every step. The cost is a download per step output and an upload per step input
(only the hashing where the controller has the bytes); a shared-filesystem shortcut for the local
executor would save that, at the price of a second path scheme and of reuse (cwltool's local
folders, and so the argv, differ from run to run).

Out of scope: InplaceUpdateRequirement (inputs are read-only copies), empty folders in a step's
output (jobnest's data holds files), paths in env values, dockerOutputDirectory,
dockerFile/dockerLoad, MPI, CUDA, `--provenance`, and cwltool's `--cachedir` (jobnest's reuse takes
its place). Secrets are passed in argv and env, which the controller stores. A literal `{output}`
or `{inputs.NAME}` in a command line is the controller's placeholder, as in any job's argv.

The CWL conformance subset that tests/test_cwl.py runs is listed in tests/cwl/conformance/README.md.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Generator, MutableMapping
from pathlib import Path
from typing import Any

import jobnest

from ._client import TERMINAL

try:
    from cwltool.argparser import arg_parser
    from cwltool.command_line_tool import CommandLineTool
    from cwltool.context import LoadingContext, RuntimeContext
    from cwltool.errors import WorkflowException
    from cwltool.executors import MultithreadedJobExecutor
    from cwltool.job import JobBase
    from cwltool.main import main as cwltool_main
    from cwltool.pathmapper import PathMapper
    from cwltool.utils import bytes2str_in_dicts
    from cwltool.workflow import default_make_tool
except ImportError as e:  # an optional extra
    raise ImportError(f"jobnest-cwl needs cwltool: pip install 'jobnest[cwl]' ({e})") from None

log = logging.getLogger("cwltool")  # cwltool's logger, so messages look and filter as its own

# The paths cwltool is told the tool sees (absolute, as its path logic wants them), and the
# placeholders they become in the job's argv.
OUTPUT = "/jobnest-cwl/outdir"  # runtime.outdir
STAGE = "/jobnest-cwl/stage"  # the step's input files
PLACEHOLDERS = {OUTPUT: "{output}", STAGE: "{inputs.stage}"}
WORKDIR = "{inputs.workdir}"  # the step's InitialWorkDirRequirement listing, copied into its output folder
TMPDIR = "/tmp"
EXIT_CODE_FILE = ".jobnest-cwl-exit-code"  # the real exit code, when a non-zero one succeeded
PATHS_FILE = ".jobnest-cwl-paths"  # the output and stage folders as the job saw them, for cwl.output.json
STDERR_TAIL = 2000  # bytes of a failed step's stderr shown
MAX_IN_FLIGHT = 64  # --parallel: cores' worth of steps submitted at once


class StagePathMapper(PathMapper):
    """cwltool's path mapper with the staging folders named by position, not at random, so the
    same inputs give the same argv (and so reuse)."""

    def setup(self, referenced_files: Any, basedir: str) -> None:
        for n, fob in enumerate(referenced_files):
            stagedir = os.path.join(self.stagedir, str(n)) if self.separateDirs else self.stagedir
            self.visit(fob, stagedir, basedir, copy=bool(fob.get("writable", False)), staged=True)

    def visit(self, obj: Any, stagedir: str, basedir: str, copy: bool = False, staged: bool = False) -> None:
        if self.separateDirs and "dirname" in obj:  # an input: by position, not where an earlier step had it
            obj = {k: v for k, v in obj.items() if k != "dirname"}
        super().visit(obj, stagedir, basedir, copy=copy, staged=staged)


class JobnestTool(CommandLineTool):
    """A CommandLineTool whose jobs run as jobnest jobs, with jobnest's placeholders as paths."""

    def __init__(self, toolpath_object: Any, loading_context: LoadingContext, client: jobnest.Client,
                 executor: str) -> None:
        super().__init__(toolpath_object, loading_context)
        self.client, self.executor = client, executor

    def make_job_runner(self, runtime_context: RuntimeContext) -> type[JobBase]:
        super().make_job_runner(runtime_context)  # for its checks and --default-container
        return JobnestJob

    def make_path_mapper(self, reffiles: Any, stagedir: str, runtime_context: RuntimeContext,
                         separateDirs: bool) -> PathMapper:
        return StagePathMapper(reffiles, runtime_context.basedir, stagedir, separateDirs)

    def _init_job(self, joborder: Any, runtime_context: RuntimeContext) -> Any:
        inner = runtime_context.copy()  # preset, so that cwltool makes no local folders for them
        inner.outdir, inner.tmpdir, inner.stagedir = OUTPUT, TMPDIR, STAGE
        inner.docker_outdir, inner.docker_tmpdir, inner.docker_stagedir = OUTPUT, TMPDIR, STAGE
        builder = super()._init_job(joborder, inner)
        builder.outdir, builder.tmpdir, builder.stagedir = OUTPUT, TMPDIR, STAGE  # not made local ones
        return builder

    def job(self, job_order: Any, output_callbacks: Any, runtime_context: RuntimeContext
            ) -> Generator[Any, None, None]:
        for j in super().job(job_order, output_callbacks, runtime_context):
            if isinstance(j, JobnestJob):
                j.client, j.executor = self.client, self.executor
                if j.outdir in ("", OUTPUT):  # the step's local folder for its output, which cwltool
                    j.outdir = runtime_context.create_outdir()  # (told of it now) moves or removes
            yield j


class JobnestJob(JobBase):
    """One step run as one jobnest job (see the module docstring)."""

    client: jobnest.Client
    executor: str  # --jobnest-executor: "" for the controller's choice

    def _required_env(self) -> dict[str, str]:
        return {}  # HOME and TMPDIR are set by the wrapper, PATH by the executor or the image

    def run(self, runtimeContext: RuntimeContext, tmpdir_lock: threading.Lock | None = None) -> None:
        self._setup(runtimeContext)
        status, outputs = "permanentFail", {}
        try:
            status, outputs = self._run(runtimeContext)
        except jobnest.JobnestError as e:
            log.error("[job %s] jobnest refused it: %s", self.name, e)
        except WorkflowException as e:
            log.error("[job %s] Job error:\n%s", self.name, e)
        if status == "success":
            log.info("[job %s] completed %s", self.name, status)
        else:
            log.warning("[job %s] completed %s", self.name, status)
        for made in (self.tmpdir, self.stagedir):  # the empty folders cwltool made for a container's
            if made and made not in (TMPDIR, STAGE):
                with contextlib.suppress(OSError):
                    os.rmdir(made)
        assert runtimeContext.workflow_eval_lock is not None and self.output_callback is not None
        with runtimeContext.workflow_eval_lock:
            self.output_callback(outputs, status)

    def _run(self, rc: RuntimeContext) -> tuple[str, Any]:
        argv, options = self._spec(rc)
        job = self.client.submit(argv, **options)
        log.info("[job %s] is jobnest job %s%s", self.name, job.uuid, ", reused" if job.reused else "")
        self._wait(job.uuid)
        info = job.info
        code = info.exit_code
        if info.state == "succeeded" and info.output:
            self.client.download(info.output, self.outdir)
            code = _read_back(Path(self.outdir)) if code == 0 else code
        status = self._status(code if info.state in ("succeeded", "failed") else None)
        if status != "success":
            tail = self.client.log_tail(job.uuid, size=STDERR_TAIL)
            log.error("[job %s] jobnest job %s %s: %s%s", self.name, job.uuid, info.state, info.reason,
                      "; its stderr ends:\n" + tail if tail.strip() else "")
            return status, {}
        return status, bytes2str_in_dicts(self.collect_outputs(self.outdir, code or 0))  # type: ignore[arg-type]

    def _wait(self, uuid: str) -> None:
        """Until the job ends; a watch the controller broke off (restarting, say) begins again."""
        while True:
            try:
                for event in self.client.watch(uuids=[uuid]):
                    if event.state in TERMINAL:
                        return
            except jobnest.Unavailable as e:
                log.warning("[job %s] lost the controller (%s); watching again", self.name, e)
                time.sleep(1)

    def _status(self, code: int | None) -> str:
        """cwltool's verdict on an exit code (None: the job ended without one)."""
        if code is None:
            return "permanentFail"
        if code in self.successCodes:
            return "success"
        if code in self.temporaryFailCodes:
            return "temporaryFail"
        if code in self.permanentFailCodes:
            return "permanentFail"
        return "success" if code == 0 else "permanentFail"

    def _spec(self, rc: RuntimeContext) -> tuple[list[str], dict[str, Any]]:
        """The job's argv and submit options; uploads its files."""
        secrets = rc.secret_store
        command = [str(a) for a in self.command_line]
        # the controller sets its own variables; a token of this program's must not go into a stored spec
        env = {k: v for k, v in self.environment.items() if not k.startswith("JOBNEST_")}
        if secrets is not None:
            command, env = secrets.retrieve(command), secrets.retrieve(env)  # type: ignore[assignment]
        inputs, folders = {}, []
        with tempfile.TemporaryDirectory(prefix="jobnest-cwl-") as tmp:
            _lay_out(self.pathmapper, STAGE, Path(tmp, "stage"), rc)  # its empty folders are lost
            if any(Path(tmp, "stage").iterdir()):
                inputs["stage"] = self.client.upload(Path(tmp, "stage"))
            if self.generatemapper is not None:
                folders = _lay_out(self.generatemapper, OUTPUT, Path(tmp, "workdir"), rc)
                if any(Path(tmp, "workdir").iterdir()):
                    inputs["workdir"] = self.client.upload(Path(tmp, "workdir"))
        image = ""
        if rc.use_container:
            docker = self.get_requirement("DockerRequirement")[0] or {}
            image = str(docker.get("dockerPull") or docker.get("dockerImageId") or "")
        reuse, _ = self.get_requirement("WorkReuse")
        resources = self.builder.resources
        argv = ["/bin/sh", "-c", self._wrapper("workdir" in inputs, folders, "stage" in inputs), "sh", *command]
        for inner, placeholder in PLACEHOLDERS.items():
            argv = [a.replace(inner, placeholder) for a in argv]
        return argv, dict(
            name=self.name, image=image or None, executor=self.executor or ("" if image else "local"), env=env,
            inputs=inputs, cpu=float(resources["cores"]), memory=math.ceil(resources["ram"]) * 2**20,
            timeout=self.timelimit or 0, reuse=bool((reuse or {}).get("enableReuse", True)))

    def _wrapper(self, workdir: bool, folders: list[str], stage: bool) -> str:
        """The shell script that runs the command line in the job (its arguments are "$@")."""
        lines = ['cd "$JOBNEST_OUTPUT" || exit 125', f'export HOME="$JOBNEST_OUTPUT" TMPDIR={TMPDIR}']
        if workdir:
            lines.append(f'cp -R "{WORKDIR}"/. . && chmod -R u+w . || exit 125')
        if folders:  # empty ones: data holds only files
            lines.append("mkdir -p " + " ".join(shlex.quote(f) for f in folders))
        redirect = ""
        if self.stdin:
            redirect += f" <{shlex.quote(self.stdin)}"
        for fd, name in ((1, self.stdout), (2, self.stderr)):
            if name:
                if "/" in name:
                    lines.append(f"mkdir -p {shlex.quote(os.path.dirname(name))}")
                redirect += f" {fd}>{shlex.quote(name)}"
        seen = '"$JOBNEST_OUTPUT" "$PWD"' + (f' "{STAGE}"' if stage else "")
        lines += [f'"$@"{redirect}', "code=$?", f'[ -f cwl.output.json ] && printf "%s\\n" {seen} >{PATHS_FILE}']
        other_successes = sorted({c for c in self.successCodes if c != 0})
        if other_successes:  # a failed run keeps no output: it succeeds, and the code goes in a file
            lines.append(f'case $code in {"|".join(map(str, other_successes))}) echo $code >{EXIT_CODE_FILE}; '
                         "exit 0;; esac")
        lines.append("exit $code")
        return "\n".join(lines)


def _lay_out(mapper: PathMapper, prefix: str, root: Path, rc: RuntimeContext) -> list[str]:
    """Put the mapper's staged entries under `prefix` into `root`, as the job is to see them
    there; returns the folders made empty (as paths under `prefix`)."""
    root.mkdir()
    folders = []
    for _, entry in mapper.items():
        if not entry.staged or not entry.target.startswith(prefix + "/"):
            continue
        relative = entry.target[len(prefix) + 1:]
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.type in ("File", "WritableFile"):
            _link_or_copy(entry.resolved, target)
        elif entry.type in ("Directory", "WritableDirectory"):
            if entry.resolved.startswith("_:"):
                target.mkdir(parents=True, exist_ok=True)
                folders.append(relative)
            else:
                shutil.copytree(entry.resolved, target, copy_function=_link_or_copy, dirs_exist_ok=True)
        elif entry.type in ("CreateFile", "CreateWritableFile"):
            text = rc.secret_store.retrieve(entry.resolved) if rc.secret_store else entry.resolved
            target.write_text(str(text))
    return folders


def _read_back(outdir: Path) -> int:
    """Undo what the wrapper left in a step's downloaded output: returns the real exit code, and
    turns the paths the job saw in cwl.output.json back into the ones cwltool knows."""
    code = 0
    if (outdir / EXIT_CODE_FILE).exists():
        code = int((outdir / EXIT_CODE_FILE).read_text())
        (outdir / EXIT_CODE_FILE).unlink()
    if (outdir / PATHS_FILE).exists():
        seen = (outdir / PATHS_FILE).read_text().splitlines()
        (outdir / PATHS_FILE).unlink()
        text = (outdir / "cwl.output.json").read_text()
        for path, inner in sorted(zip(seen, (OUTPUT, OUTPUT, STAGE)), key=lambda pair: -len(pair[0])):
            text = text.replace(path, inner)
        (outdir / "cwl.output.json").write_text(text)
    return code


def _link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or not allowed
        shutil.copy2(source, target)


class ParallelExecutor(MultithreadedJobExecutor):
    """`--parallel`: ready steps are submitted up to MAX_IN_FLIGHT cores' worth at once (or the
    biggest step's, if larger); the controller, not this machine's size, decides what runs when. A
    step asks for its minimum resources, as without `--parallel`."""

    def __init__(self) -> None:
        super().__init__()
        self.max_cores, self.max_ram = float(MAX_IN_FLIGHT), sys.maxsize

    def select_resources(self, request: MutableMapping[str, Any], runtime_context: RuntimeContext
                         ) -> dict[str, Any]:
        self.max_cores = max(self.max_cores, float(request["coresMin"]))  # a bigger step: a bigger budget
        return {"cores": request["coresMin"], "ram": math.ceil(request["ramMin"]),
                "tmpdirSize": math.ceil(request["tmpdirMin"]), "outdirSize": math.ceil(request["outdirMin"])}


def main(argv: list[str] | None = None) -> int:
    """`jobnest-cwl`: cwltool's command line, each step a jobnest job."""
    parser = arg_parser()
    parser.add_argument("--jobnest-executor", default="", metavar="NAME",
                        help="jobnest executor for every step (local, docker, slurm, kubernetes); default: "
                             "a container executor for a step with DockerRequirement, else local")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    client = None
    if args.workflow:  # not for --version or --help
        client = jobnest.connect()
        client.record_driver(f"cwl {Path(args.workflow).name}")

    def make_tool(toolpath_object: Any, loading_context: LoadingContext) -> Any:
        if toolpath_object.get("class") == "CommandLineTool" and client is not None:
            return JobnestTool(toolpath_object, loading_context, client, args.jobnest_executor)
        return default_make_tool(toolpath_object, loading_context)

    loading_context = LoadingContext(vars(args))
    loading_context.construct_tool_object = make_tool
    runtime_context, executor = RuntimeContext(vars(args)), ParallelExecutor() if args.parallel else None
    if executor is not None:  # cwltool hooks it up only for an executor of its own
        runtime_context.select_resources = executor.select_resources
    return cwltool_main(args=args, executor=executor, loadingContext=loading_context, runtimeContext=runtime_context,
                        versionfunc=lambda: f"jobnest-cwl (cwltool {importlib.metadata.version('cwltool')})")


if __name__ == "__main__":
    sys.exit(main())
