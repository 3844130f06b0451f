"""The GA4GH Task Execution Service (TES v1) API of `jobnest web`: for Nextflow, Cromwell, cwl-tes
and snakemake-executor-plugin-tes. `app.create_app` mounts `routes()` under `/v1` (py-tes 0.4.x,
the snakemake plugin) and `/ga4gh/tes/v1` (TES 1.1 clients). Like the monitor, it is only a
client of the controller: a task *is* a job, its id the job's uuid, and every job the caller may
see is a task (one made otherwise shows its argv as its one executor).

Who: `Authorization: Bearer TOKEN` acts as that jobnest token. Without one (py-tes sends Basic
None:None), a monitor without login (on loopback) acts with its own token; with login, 401. No
cookie is read, so there is no CSRF token; but as a page of another site could post a form to
127.0.0.1, a POST without a bearer token must say `Content-Type: application/json`, which no form
can, and come from no other Origin.

A task is one job, `sh -c SCRIPT jobnest-tes TASK_JSON` (the task as given, shown back by GET):
SCRIPT places the inputs, runs the executors in order (each in a subshell with its workdir, env
and stdin/stdout/stderr paths; the first to fail, unless `ignore_error`, ends the job with its
exit code, named on stderr), then copies each output path to `tes-outputs/PATH` in the job's
output folder, which the controller stores when the job succeeds (an output not made fails it,
exit 1). All executors share one image (a job runs in one); image "" or "local" is the
controller's local executor, any other a container. cpu_cores -> cpu, ram_gb -> memory (10^9
bytes each), tags -> labels, name -> name; disk_gb, preemptible and zones are ignored. A task is
not reused from an identical earlier one (its executors may act beyond its outputs, as Snakemake's
do) unless its tag `jobnest.reuse` is "true".

Paths: in a container, TES paths are the container's own. On the local executor, whose processes
share the host, the task's absolute paths (inputs, outputs, volumes, workdirs, stdio) are laid
under `tes/` in the run's own folder (`$JOBNEST_TES_ROOT`, beside its output folder), so a task
writes nothing outside its run, and two tasks naming the same path do not meet; an argument that
is one of those paths or lies under one is given as mapped (a path inside a longer argument, such
as a shell line, is not: write `$JOBNEST_TES_ROOT/path` there). Without a workdir an executor
runs where the job does: on the host in its output folder (what is left there is stored), in a
container in the image's workdir. A literal `{output}` or `{inputs.NAME}` in a command is the
controller's placeholder, as in any job's argv.

Inputs: `content` (uploaded as a file), `data:DIGEST[/PATH]` (stored data, such as an upload or
an output, or a path in it), `job:UUID[/PATH]` (another job's or task's output: waits for it; a
task's outputs are under `tes-outputs/`), or `file:///ABS` (read and uploaded by this server).
Outputs: `file:///ABS` (written by this server, from the stored output, when the task is first
fetched after it succeeded, before COMPLETE is answered; a failure to is a SYSTEM_ERROR) or
`jobnest:` (kept in the job's output only). The TaskLog's outputs name each file's `job:` URL.
file:// reads and writes the host as the user running `jobnest web`, which no token stands for, so
it reaches only the folders given as `jobnest web --tes-file-root DIR` (or JOBNEST_TES_FILE_ROOTS,
os.pathsep-separated; links resolved); elsewhere, and with none given, 403.

States: queued -> QUEUED; running -> INITIALIZING until it has started, then RUNNING; succeeded ->
COMPLETE once its file:// outputs are written (SYSTEM_ERROR if they could not be); failed by an
executor's exit code -> EXECUTOR_ERROR, failed otherwise (an input not placed, an output not made,
lost, out of memory, timed out, never started) -> SYSTEM_ERROR; cancelled -> CANCELED. The
`state` filter of a listing asks the controller for the matching jobnest state.

Inputs given as content or file:// are uploaded before the controller checks the job; if it
refuses it, they stay in its store (content-addressed, removed by `jobnest gc`) and nothing else
is made.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._client import Client, JobInfo
from ..errors import InvalidSpec, JobnestError, PermissionDenied, Unauthenticated
from .app import Monitor, _error, _int

PREFIXES = ("/v1", "/ga4gh/tes/v1")
LOCAL_IMAGES = ("", "local")
OUTPUTS = "tes-outputs"  # where a task's outputs go in its job's output folder
TAIL = 16 * 1024  # bytes of stdout and stderr shown in a FULL view
MAX_BODY = 8 * 2**20
MAX_CONTENT = 128 * 1024
MAX_CLIENTS = 256
FULL_PAGE = 100  # tasks in a page of the FULL view at most: each costs a few calls to the controller
MAX_DELIVERED = 100_000  # tasks whose file:// outputs this server remembers having written
STATES = {"QUEUED": "queued", "INITIALIZING": "running", "RUNNING": "running", "COMPLETE": "succeeded",
          "EXECUTOR_ERROR": "failed", "SYSTEM_ERROR": "failed", "CANCELED": "cancelled"}
VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FIELDS = {"labels": "tags", "memory": "resources.ram_gb", "cpu": "resources.cpu_cores", "image": "executors[0].image",
          "executor": "executors[0].image", "name": "name", "argv": "executors"}


def _bad(field: str, problem: str) -> InvalidSpec:
    return InvalidSpec(problem, field=field)


def _time(t: float | None) -> str | None:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z") if t else None


def _absolute(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _bad(field, f"must be an absolute path, got {str(value)[:80]!r}")
    return posixpath.normpath(value)


def _strings(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _bad(field, "must be an object of strings")
    return value


class Tes:
    """The TES endpoints of one monitor: its clients per token, and the outputs it delivered."""

    def __init__(self, monitor: Monitor, file_roots: tuple[str, ...] = ()) -> None:
        self.monitor = monitor
        self.roots = [os.path.realpath(r) for r in file_roots]
        self.clients: OrderedDict[str, Client] = OrderedDict()
        self.lock = threading.Lock()
        # task -> "" once its file:// outputs are written (or it had none), else why not; the oldest
        # are forgotten (a task fetched again then has its outputs written again)
        self.delivered: OrderedDict[str, str] = OrderedDict()
        self.delivering: dict[str, threading.Lock] = {}

    def client(self, request: Request) -> Client:
        token = _bearer(request)
        if not token:
            if self.monitor.login:
                raise Unauthenticated("send Authorization: Bearer TOKEN (a jobnest token)", field="authorization")
            token = self.monitor.token
        with self.lock:
            if token not in self.clients:
                self.clients[token] = Client(self.monitor.address, token, driver=False)
                while len(self.clients) > MAX_CLIENTS:  # not closed: a request may be using it; its
                    self.clients.popitem(last=False)  # channel closes once nothing holds it
            self.clients.move_to_end(token)
            return self.clients[token]

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    def local_file(self, url: str, field: str) -> str:
        """The host path a file:// URL names, if this server may read or write it (see above)."""
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise _bad(field, f"a file URL names an absolute path on this host (file:///path), got {url[:80]!r}")
        return self.allowed(unquote(parts.path), field)

    def allowed(self, path: str, field: str) -> str:
        real = os.path.realpath(path)
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in self.roots):
            raise PermissionDenied(f"{path} is not under a folder this server may read and write (jobnest web "
                                   f"--tes-file-root: {os.pathsep.join(self.roots) or 'none given'})", field=field)
        return real

    # -- creating ------------------------------------------------------------------------------

    def create(self, request: Request, body: Any) -> dict[str, Any]:
        client = self.client(request)
        task = _checked(body)
        files = {(kind, i): self.local_file(item["url"], f"{kind}[{i}].url") for kind in ("inputs", "outputs")
                 for i, item in enumerate(task[kind]) if (item.get("url") or "").startswith("file:")}
        host = (task["executors"][0].get("image") or "") in LOCAL_IMAGES
        with tempfile.TemporaryDirectory() as tmp:
            inputs: dict[str, str] = {}
            for i, given in enumerate(task["inputs"]):
                field = f"inputs[{i}].url"
                if "content" in given:
                    path = Path(tmp) / f"input{i}"
                    path.write_text(given["content"], encoding="utf-8")
                    inputs[f"i{i}"] = self.uploaded(client, path, field)
                elif ("inputs", i) in files:
                    local = files["inputs", i]
                    if not os.path.exists(local):
                        raise _bad(field, f"{local} does not exist")
                    inputs[f"i{i}"] = self.uploaded(client, local, field)
                else:
                    inputs[f"i{i}"] = given["url"].split("/", 1)[0]
            resources = task.get("resources") or {}
            options: dict[str, Any] = {"name": task.get("name") or "tes-task", "labels": task.get("tags", {}),
                                       "reuse": task["tags"].get("jobnest.reuse") == "true",
                                       "inputs": inputs, "cpu": resources.get("cpu_cores"),
                                       "memory": max(1, round(resources["ram_gb"] * 10**9))
                                       if resources.get("ram_gb") else None}
            image = task["executors"][0].get("image") or ""
            options |= {"executor": "local"} if host else {"image": image}
            argv = ["sh", "-c", _script(task, host), "jobnest-tes", json.dumps(task, separators=(",", ":"))]
            try:
                job = client.submit_many([client.spec(argv, **options)])[0]
            except InvalidSpec as e:
                raise _bad(_task_field(e.field or ""), e.problem) from None
        return {"id": job.uuid}

    @staticmethod
    def uploaded(client: Client, path: str | Path, field: str) -> str:
        try:
            return f"data:{client.upload(path).digest}"
        except (OSError, JobnestError) as e:
            raise _bad(field, f"could not be uploaded: {getattr(e, 'problem', e)}") from None

    # -- reading -------------------------------------------------------------------------------

    def task(self, client: Client, info: JobInfo, view: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """The tesTask of a job, in `view` (MINIMAL: id and state; BASIC: all but logs' stdout,
        stderr, system logs and inputs' content; FULL: all)."""
        state = self.state(client, info, spec)
        if view == "MINIMAL":
            return {"id": info.uuid, "state": state}
        given = _given(spec or {})
        task: dict[str, Any] = {"id": info.uuid, "state": state, "name": info.name, **given,
                                "creation_time": _time(info.created_at)}
        if view == "BASIC":
            task["inputs"] = [{k: v for k, v in i.items() if k != "content"} for i in task.get("inputs", [])]
        log: dict[str, Any] = {"start_time": _time(info.started_at), "end_time": _time(info.finished_at),
                               "metadata": {"jobnest.run": info.run_uuid, "jobnest.executor": info.executor,
                                            "jobnest.node": info.node, "jobnest.reused": str(info.reused).lower()},
                               "logs": self.executor_logs(client, info, len(given.get("executors", [])), view),
                               "outputs": self.output_logs(client, info, given.get("outputs", []))}
        if view == "FULL":
            log["system_logs"] = [f"{info.state}: {info.reason}" if info.reason else info.state] + [
                f"attempt {a['attempt']}: {a['reason']}" for a in (info.attempts or ())]
            if self.delivered.get(info.uuid):
                log["system_logs"].append(self.delivered[info.uuid])
        task["logs"] = [{k: v for k, v in log.items() if v is not None}]
        return {k: v for k, v in task.items() if v is not None}

    def executor_logs(self, client: Client, info: JobInfo, count: int, view: str) -> list[dict[str, Any]]:
        """One log per executor that ran: each exit code 0 if the job succeeded, else up to the one
        that stderr names as failing; otherwise one log, with the job's exit code if it failed. The
        job's stdout and stderr go with the last log."""
        if info.started_at is None:
            return []
        tails = {s: client.log_tail(info.uuid, s, TAIL) for s in ("stdout", "stderr")} \
            if view == "FULL" or info.state == "failed" else {}
        failed = re.findall(r"jobnest-tes: executor (\d+) exited (\d+)", tails.get("stderr", ""))
        logs: list[dict[str, Any]]
        if info.state == "succeeded":
            logs = [{"exit_code": 0} for _ in range(max(count, 1))]
        elif failed:
            logs = [{"exit_code": 0} for _ in range(int(failed[-1][0]))] + [{"exit_code": int(failed[-1][1])}]
        else:  # running, cancelled, or failed before or after the executors (then its exit code)
            logs = [{"exit_code": info.exit_code if info.state == "failed" else None}]
        logs[0]["start_time"], logs[-1]["end_time"] = _time(info.started_at), _time(info.finished_at)
        if view == "FULL":
            logs[-1] |= tails
        return [{k: v for k, v in log.items() if v is not None} for log in logs]

    def output_logs(self, client: Client, info: JobInfo, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if info.state != "succeeded" or not info.output or not outputs:
            return []
        found = []
        entries = list(client.manifest(info.output).entries)
        for out in outputs:
            for entry, rest in _kept(entries, out):
                url = out["url"] + rest if out["url"].startswith("file:") else f"job:{info.uuid}/{entry.path}"
                found.append({"url": url, "path": out["path"] + rest, "size_bytes": str(entry.size)})
        return found

    def state(self, client: Client, info: JobInfo, spec: dict[str, Any] | None = None) -> str:
        """The task's TES state: one that succeeded is COMPLETE once its file:// outputs are written."""
        if info.state == "succeeded" and info.uuid not in self.delivered:
            self.deliver(client, info, (client.get(info.uuid).spec if spec is None else spec) or {})
        return _state(info, self.delivered.get(info.uuid))

    def deliver(self, client: Client, info: JobInfo, spec: dict[str, Any]) -> None:
        """Write the file:// outputs of a task that succeeded, once (see the module docstring)."""
        with self.lock:
            guard = self.delivering.setdefault(info.uuid, threading.Lock())
        with guard:  # one task's outputs at a time; other tasks' requests go on meanwhile
            if info.uuid not in self.delivered:
                self.delivered[info.uuid] = self.write_outputs(client, info, spec)
                while len(self.delivered) > MAX_DELIVERED:
                    self.delivered.popitem(last=False)
        with self.lock:
            self.delivering.pop(info.uuid, None)

    def write_outputs(self, client: Client, info: JobInfo, spec: dict[str, Any]) -> str:
        """Why the file:// outputs of a task could not be written, or "" once they are."""
        outputs = [o for o in _given(spec).get("outputs", []) if o["url"].startswith("file:")]
        try:
            entries = list(client.manifest(info.output).entries) if outputs else []
            for i, out in enumerate(outputs):
                dest = self.local_file(out["url"], f"outputs[{i}].url")
                for entry, rest in _kept(entries, out):
                    target = Path(dest + rest)
                    self.allowed(str(target), f"outputs[{i}].url")  # no link in the way leads out
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fd, part = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")  # no link followed
                    try:
                        with os.fdopen(fd, "wb") as f:
                            for chunk in client.read_blob(entry.digest, info.output):
                                f.write(chunk)
                        os.chmod(part, 0o755 if entry.executable else 0o644)
                        os.replace(part, target)
                    except BaseException:
                        os.unlink(part)
                        raise
        except (OSError, JobnestError) as e:
            return f"writing the outputs failed: {e}"
        return ""

    def get(self, request: Request) -> dict[str, Any]:
        client, view = self.client(request), _view(request)
        info = client.get(request.path_params["id"])
        return self.task(client, info, view, info.spec)

    def listing(self, request: Request) -> dict[str, Any]:
        client, view, q = self.client(request), _view(request), request.query_params
        state, prefix = q.get("state", ""), q.get("name_prefix", "")
        if state and state not in STATES and state not in ("UNKNOWN", "PAUSED", "PREEMPTED"):
            raise _bad("state", f"unknown state {state[:40]!r} (known: {', '.join(STATES)})")
        size = _int(request, "page_size", 256, 1, 2048)
        size = min(size, FULL_PAGE) if view == "FULL" else size  # fewer than asked, as TES allows
        after = q.get("page_token", "")
        if state and state not in STATES:
            return {"tasks": []}  # no job is ever in that state
        pattern = prefix + "*" if prefix and not set(prefix) & set("*?") else ""
        found: list[JobInfo] = []
        for info in client.list(states=[STATES[state]] if state else None, name=pattern, newest_first=True):
            if after:
                after = "" if info.uuid == after else after
                continue
            if info.name.startswith(prefix) and (not state or self.state(client, info) == state):
                found.append(info)
                if len(found) > size:
                    break
        if after:
            raise _bad("page_token", "names no task of this listing (a next_page_token it gave)")
        tasks = [self.task(client, i, view, None if view == "MINIMAL" else client.get(i.uuid).spec)
                 for i in found[:size]]
        return {"tasks": tasks, **({"next_page_token": found[size - 1].uuid} if len(found) > size else {})}

    def cancel(self, request: Request) -> dict[str, Any]:
        self.client(request).cancel(request.path_params["id"], "cancelled through the TES API")
        return {}

    def service_info(self, request: Request) -> dict[str, Any]:
        storage = ["jobnest:", "data:", "job:"]
        storage += [f"file://{r}" for r in self.roots]
        if request.url.path.endswith("/tasks/service-info"):  # TES 0.3, as py-tes 0.4 asks for it
            return {"name": "jobnest", "doc": "jobnest: every task is a job", "storage": storage}
        return {"id": "org.jobnest.tes", "name": "jobnest", "type": {"group": "org.ga4gh", "artifact": "tes",
                "version": "1.1.0"}, "description": "GA4GH TES served by jobnest web: every task is a jobnest job",
                "organization": {"name": "jobnest", "url": "https://github.com/jobnest"}, "version": _version(),
                "storage": storage}


def _bearer(request: Request) -> str:
    kind, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if kind.lower() == "bearer" else ""


def _version() -> str:
    try:
        return metadata.version("jobnest")
    except metadata.PackageNotFoundError:
        return "unknown"


def _view(request: Request) -> str:
    view = request.query_params.get("view", "MINIMAL")
    if view not in ("MINIMAL", "BASIC", "FULL"):
        raise _bad("view", f"must be MINIMAL, BASIC or FULL, got {view[:40]!r}")
    return view


def _state(info: JobInfo, delivery: str | None = None) -> str:
    if info.state == "succeeded":
        return "SYSTEM_ERROR" if delivery else "COMPLETE"
    if info.state == "failed":
        # an executor's own exit code; the script's other failures (inputs, outputs) are the system's
        plain = (info.exit_code is not None and re.match(rf"exit code {info.exit_code}\b", info.reason)
                 and not re.search(r"jobnest-tes: (?!executor)", info.reason))
        return "EXECUTOR_ERROR" if plain else "SYSTEM_ERROR"
    if info.state == "running":
        return "RUNNING" if info.started_at else "INITIALIZING"
    return {"queued": "QUEUED", "cancelled": "CANCELED"}.get(info.state, "UNKNOWN")


def _given(spec: dict[str, Any]) -> dict[str, Any]:
    """The task a job was made from, or what a job made otherwise looks like as one."""
    argv = spec.get("argv") or []
    if len(argv) == 5 and argv[3] == "jobnest-tes":
        try:
            return _checked(json.loads(argv[4]))
        except (ValueError, InvalidSpec):
            pass  # not made by this server after all
    executor = {"image": spec.get("image", ""), "command": argv, "workdir": spec.get("cwd") or None,
                "env": spec.get("env") or None}
    return {"executors": [{k: v for k, v in executor.items() if v is not None}], "tags": spec.get("labels") or {}}


def _kept(entries: list[Any], out: dict[str, Any]) -> Iterator[tuple[Any, str]]:
    """The files (no links: they may point anywhere) of a stored output that hold TES output
    `out`, each with its path below the output's."""
    inside = f"{OUTPUTS}{out['path']}"
    for entry in entries:
        if not entry.link and (entry.path == inside or entry.path.startswith(inside + "/")):
            yield entry, entry.path[len(inside):]


def _checked(body: Any) -> dict[str, Any]:
    """The task with what was checked normalised; bad input is refused naming its field. Its
    file:// URLs are the server's to check, the job it becomes the controller's."""
    if not isinstance(body, dict):
        raise _bad("body", "must be a JSON object (a tesTask)")
    task = {k: v for k, v in body.items() if k in ("name", "description", "inputs", "outputs", "resources",
                                                    "executors", "volumes", "tags")}
    if not isinstance(task.get("name", ""), str):
        raise _bad("name", "must be a string")
    executors = task.get("executors")
    if not isinstance(executors, list) or not executors:
        raise _bad("executors", "must be a list of at least one executor")
    for i, ex in enumerate(executors):
        if not isinstance(ex, dict):
            raise _bad(f"executors[{i}]", "must be an object")
        command = ex.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            raise _bad(f"executors[{i}].command", "must be a non-empty list of strings")
        if not isinstance(ex.get("image", ""), str):
            raise _bad(f"executors[{i}].image", "must be a string")
        if (ex.get("image") or "") != (executors[0].get("image") or ""):
            raise _bad(f"executors[{i}].image", "the executors of a task run in one job, so in one image: "
                       f"this one differs from executors[0]'s {executors[0].get('image')!r}")
        if not isinstance(ex.get("ignore_error", False), bool):
            raise _bad(f"executors[{i}].ignore_error", "must be true or false")
        for name in ("workdir", "stdin", "stdout", "stderr"):
            if ex.get(name) is not None:
                ex[name] = _absolute(ex[name], f"executors[{i}].{name}")
        for key in _strings(ex.get("env"), f"executors[{i}].env"):
            if not VAR.fullmatch(key):
                raise _bad(f"executors[{i}].env", f"{key[:40]!r} is not a variable name")
    for kind in ("inputs", "outputs", "volumes"):
        task[kind] = task.get(kind) or []
        if not isinstance(task[kind], list):
            raise _bad(kind, "must be a list")
    for kind in ("inputs", "outputs"):
        for i, item in enumerate(task[kind]):
            if not isinstance(item, dict):
                raise _bad(f"{kind}[{i}]", "must be an object")
            item["path"] = _absolute(item.get("path"), f"{kind}[{i}].path")
            if item.get("type", "FILE") not in ("FILE", "DIRECTORY"):
                raise _bad(f"{kind}[{i}].type", "must be FILE or DIRECTORY")
            url, content = item.get("url"), item.get("content")
            if kind == "inputs" and content is not None:
                if url or not isinstance(content, str) or len(content) > MAX_CONTENT:
                    raise _bad(f"inputs[{i}].content", f"give a url or the content, a string of at most "
                                                       f"{MAX_CONTENT} characters (as TES allows)")
                continue
            if not isinstance(url, str) or not url:
                raise _bad(f"{kind}[{i}].url", "is required")
            schemes = ("file:", "data:", "job:") if kind == "inputs" else ("file:", "jobnest:")
            if not url.startswith(schemes):
                raise _bad(f"{kind}[{i}].url", f"must start with one of {', '.join(schemes)}, got {url[:80]!r}")
    for i, volume in enumerate(task["volumes"]):
        task["volumes"][i] = _absolute(volume, f"volumes[{i}]")
    task["tags"] = _strings(task.get("tags"), "tags")
    resources = task.get("resources") or {}
    if not isinstance(resources, dict):
        raise _bad("resources", "must be an object")
    for name in ("cpu_cores", "ram_gb"):
        value = resources.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not 0 < value < 10**12):
            raise _bad(f"resources.{name}", f"must be a number greater than 0 (and below 10^12), got {value!r}")
    return task


def _task_field(field: str) -> str:
    """The TES field of what the controller refused (it names `jobs[0].memory`, say)."""
    name = field.removeprefix("jobs[0].")
    found = re.search(r"inputs\W*i(\d+)", name)
    return f"inputs[{found[1]}].url" if found else FIELDS.get(name.split("[")[0].split(".")[0], name)


def _script(task: dict[str, Any], host: bool) -> str:
    """The shell program that runs a task in its job (see the module docstring)."""
    q = shlex.quote
    declared = {e.get(n) for e in task["executors"] for n in ("workdir", "stdin", "stdout", "stderr")}
    declared |= {i["path"] for kind in ("inputs", "outputs") for i in task[kind]} | set(task["volumes"])
    declared.discard(None)

    def at(path: str) -> str:  # a TES path, as this job sees it
        return f'"$R"{q(path)}'

    def arg(a: str) -> str:
        mapped = host and any(a == p or a.startswith(p.rstrip("/") + "/") for p in declared)
        return at(a) if mapped else q(a)

    lines = ["R=" + ('"${JOBNEST_OUTPUT%/*}/tes"' if host else "''"), 'O="$JOBNEST_OUTPUT"/' + OUTPUTS,
             'export JOBNEST_TES_ROOT="$R"', 'fail() { echo "jobnest-tes: $1" >&2; exit 1; }']
    for volume in task["volumes"]:
        lines.append(f"mkdir -p {at(volume)} || fail {q(f'volume {volume} could not be made')}")
    for i, given in enumerate(task["inputs"]):
        rest = "" if "content" in given or given["url"].startswith("file:") else given["url"].partition("/")[2]
        source = q(f"{{inputs.i{i}}}") + (q("/" + rest) if rest else "")
        lines.append(f"mkdir -p {at(posixpath.dirname(given['path']))} && cp -R {source} {at(given['path'])} "
                     f"|| fail {q(f'input {i} could not be placed at ' + given['path'])}")
    for i, ex in enumerate(task["executors"]):
        steps = [f"mkdir -p {at(ex['workdir'])} && cd {at(ex['workdir'])}"] if ex.get("workdir") else []
        steps += [f"export {k}={q(v)}" for k, v in (ex.get("env") or {}).items()]
        redirects = "".join(f" {sign}{at(ex[name])}" for name, sign in (("stdin", "<"), ("stdout", ">"),
                                                                        ("stderr", "2>")) if ex.get(name))
        made = [at(posixpath.dirname(ex[name])) for name in ("stdout", "stderr") if ex.get(name)]
        steps = ([f"mkdir -p {' '.join(made)}"] if made else []) + steps
        steps.append("exec " + " ".join(arg(a) for a in ex["command"]) + redirects)
        lines.append("( " + " && ".join(steps) + " )")
        if not ex.get("ignore_error"):
            lines.append(f'c=$?; if [ $c -ne 0 ]; then echo "jobnest-tes: executor {i} exited $c" >&2; exit $c; fi')
    for i, out in enumerate(task["outputs"]):
        path = out["path"]
        lines.append(f"[ -e {at(path)} ] || fail {q(f'output {i}: {path} was not made')}")
        lines.append(f'mkdir -p "$O"{q(posixpath.dirname(path))} && cp -R {at(path)} "$O"{q(path)} '
                     f"|| fail {q(f'output {i}: {path} could not be kept')}")
    return "\n".join(lines) + "\n"


def routes(monitor: Monitor, file_roots: tuple[str, ...] = ()) -> tuple[list[Route], Callable[[], None]]:
    """The TES routes under both prefixes, and what closes their clients."""
    tes = Tes(monitor, file_roots)

    def endpoint(handler: Callable[..., Any], post: bool = False, body: bool = False) -> Callable[[Request], Any]:
        async def serve(request: Request) -> Response:
            try:
                given: list[Any] = []
                if post and not _bearer(request):  # acting with the monitor's token: no other site may
                    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
                    origin = request.headers.get("origin", "").split("://", 1)[-1]
                    if kind != "application/json" or (origin and origin != request.headers.get("host")):
                        raise PermissionDenied("a POST here is JSON (Content-Type: application/json), from no other "
                                               "site", field="content-type")
                if body:
                    raw = await request.body()
                    if len(raw) > MAX_BODY:
                        raise _bad("body", f"larger than {MAX_BODY} bytes")
                    try:
                        given.append(json.loads(raw or b"null"))
                    except ValueError as e:
                        raise _bad("body", f"is not JSON: {e}") from None
                result = await run_in_threadpool(handler, request, *given)
            except JobnestError as e:
                return _error(e)
            return JSONResponse(result)
        return serve

    found = []
    for prefix in PREFIXES:
        found += [Route(f"{prefix}/service-info", endpoint(tes.service_info)),
                  Route(f"{prefix}/tasks/service-info", endpoint(tes.service_info)),
                  Route(f"{prefix}/tasks", endpoint(tes.listing)),
                  Route(f"{prefix}/tasks", endpoint(tes.create, post=True, body=True), methods=["POST"]),
                  Route(f"{prefix}/tasks/{{id}}:cancel", endpoint(tes.cancel, post=True), methods=["POST"]),
                  Route(f"{prefix}/tasks/{{id}}", endpoint(tes.get))]
    return found, tes.close


