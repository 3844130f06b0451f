"""The SDK: connect to a controller, submit jobs, and follow them through handles.

`connect()` finds the controller the same way everywhere: inside a job from `JOBNEST_CONTROLLER`
and `JOBNEST_TOKEN`; elsewhere from those variables if set, else the local controller on a unix
socket under `JOBNEST_HOME`, started on demand. A program that submits from outside any job is
recorded as a driver job, so its children group under it. gRPC errors never escape this module:
they become `jobnest.errors` types.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import fcntl
import itertools
import json
import os
import socket
import subprocess
import signal
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._conditions import Condition
from ._data import Output, Upload, chunks, file_sha256, lay_out, program_archive, walk
from .errors import (Conflict, InvalidSpec, JobnestError, NotFound, PermissionDenied, Timeout, Unauthenticated,
                     Unavailable, from_rpc_error)
from .v1 import jobnest_pb2 as pb
from .v1 import jobnest_pb2_grpc as pb_grpc

TERMINAL = ("succeeded", "failed", "cancelled")
RETRY_WINDOW = 10.0  # seconds a call is sent again while the controller is unavailable
MAX_MESSAGE = 128 * 2**20  # as the controller allows: a program archive, the manifest of a big output
LOCAL_IDLE_TIMEOUT = float(os.environ.get("JOBNEST_LOCAL_IDLE_TIMEOUT", "300"))
UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
         "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None


class JobInfo(NamedTuple):
    """What the controller knows of a job at one moment (a named tuple: listings make many)."""

    uuid: str
    name: str
    state: str
    reason: str
    owner: str
    spawned_by_job_uuid: str
    run_uuid: str
    reused: bool
    run_origin_job_uuid: str
    exit_code: int | None
    cpu: float
    memory: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    node: str
    executor: str
    cpu_enforced: bool
    output: str  # the digest of its output, once it succeeded
    output_dir: str
    argv: tuple[str, ...] = ()
    # Get only: each attempt of its run that ended (attempt, exit_code, reason, memory, node,
    # started_at, finished_at), so a retry, or one out of memory, is seen.
    attempts: tuple[dict[str, Any], ...] = ()
    spec: dict[str, Any] | None = None  # Get only: what it was submitted with

    @classmethod
    def from_message(cls, m: pb.Job) -> "JobInfo":
        return cls(m.uuid, m.name, m.state, m.reason, m.owner, m.spawned_by_job_uuid, m.run_uuid, m.reused,
                   m.run_origin_job_uuid, m.exit_code if m.has_exit_code else None, m.cpu_millis / 1000,
                   m.memory, m.created_at, m.started_at or None, m.finished_at or None, m.node, m.executor,
                   m.cpu_enforced, m.output, m.output_dir, tuple(m.spec.argv), tuple(
                       {"attempt": a.attempt, "exit_code": a.exit_code if a.has_exit_code else None,
                        "reason": a.reason, "memory": a.memory, "node": a.node, "started_at": a.started_at or None,
                        "finished_at": a.finished_at} for a in m.attempts),
                   json_format.MessageToDict(m.spec, preserving_proto_field_name=True) if m.HasField("spec") else None)

    @classmethod
    def from_chunk(cls, c: pb.ListChunk) -> Iterator["JobInfo"]:
        """The jobs of one listing chunk, column by column (much faster than row by row)."""
        exit_codes = [code if has else None for code, has in zip(c.exit_code, c.has_exit_code)]
        return map(cls._make, zip(
            c.uuid, c.name, c.state, c.reason, c.owner, c.spawned_by_job_uuid, c.run_uuid, c.reused,
            c.run_origin_job_uuid, exit_codes, [m / 1000 for m in c.cpu_millis], c.memory, c.created_at,
            [t or None for t in c.started_at], [t or None for t in c.finished_at], c.node, c.executor,
            c.cpu_enforced, c.output, c.output_dir, itertools.repeat(()), itertools.repeat(()), itertools.repeat(None),
        ))

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


def parse_memory(value: int | str) -> int:
    """Bytes from 268435456, "256Mi" or "1G"."""
    if isinstance(value, (int, float)):
        return int(value)
    text = value.strip().lower().removesuffix("b")
    number = text.rstrip("kmgti")
    unit = text[len(number):]
    if unit not in UNITS or not number:
        raise InvalidSpec(f"{value!r} is not a size such as 256Mi or 2G", field="memory")
    try:
        return int(float(number) * UNITS[unit])
    except ValueError:
        raise InvalidSpec(f"{value!r} is not a size such as 256Mi or 2G", field="memory") from None


DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_NAME = 200  # as the controller allows


def parse_duration(text: str) -> float:
    """Seconds from "90s", "30m", "12h" or "30d"."""
    number, unit = text[:-1], text[-1:]
    if unit not in DURATION or not number.isdigit():
        raise InvalidSpec(f"{text!r} is not a duration such as 12h or 30d", field="duration")
    return int(number) * DURATION[unit]


class Client:
    """A connection to one controller, as one identity (a person, a driver or a job)."""

    def __init__(self, address: str, token: str = "", *, driver: bool = True) -> None:
        self.address = address
        self._token = token
        self._channel = grpc.insecure_channel(_target(address), options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 2000)])
        self._stub = pb_grpc.JobServiceStub(self._channel)
        self._data = pb_grpc.DataServiceStub(self._channel)
        self._record_driver = driver and not os.environ.get("JOBNEST_JOB")
        self._driver: Job | None = None
        self._driver_token: str | None = None
        self._finished = False
        self._driver_lock = threading.Lock()
        self._singles = _Gathered(self.submit_many)
        # Inside a job, its children run on its executor and image by default (none of its program folder).
        from_env = {"executor": os.environ.get("JOBNEST_EXECUTOR"), "image": os.environ.get("JOBNEST_IMAGE")}
        self._defaults: list[dict[str, Any]] = [{k: v for k, v in from_env.items() if v}]

    # -- plumbing ------------------------------------------------------------------------------

    def _metadata(self, token: str | None = None) -> list[tuple[str, str]]:
        token = token or self._token
        return [("authorization", f"Bearer {token}")] if token else []

    def _unary(self, name: str, request: Any, timeout: float | None = 60, token: str | None = None,
               stub: Any = None, retry: bool = True) -> Any:
        """One call; sent again while the controller is unavailable (restarting, or its store
        away), for up to `RETRY_WINDOW` seconds, each time once the channel is connected again.
        Every call retried is safe to repeat: a submit has its request id."""
        method = getattr(stub or self._stub, name)
        give_up, pause, again = time.monotonic() + RETRY_WINDOW, 0.1, False
        while True:
            left = give_up - time.monotonic()
            try:
                with _errors():
                    return method(request, metadata=self._metadata(token), wait_for_ready=again,
                                  timeout=min(timeout or left, left) if again else timeout)
            except Unavailable:
                if not retry or left < pause:
                    raise
                time.sleep(pause)
                pause, again = min(2 * pause, 2.0), True
            except Timeout:
                if not again:
                    raise
                raise Unavailable(f"the controller at {self.address} did not answer for {RETRY_WINDOW:.0f} s") from None

    def _stream(self, name: str, request: Any, timeout: float | None = None, stub: Any = None) -> "Stream":
        return Stream(getattr(stub or self._stub, name)(request, metadata=self._metadata(), timeout=timeout))

    def close(self) -> None:
        self.finish()
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submitting ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def defaults(self, **options: Any) -> Iterator["Client"]:
        """Options (image, cpu, executor, ...) for every `submit` inside the block."""
        self._defaults.append(options)
        try:
            yield self
        finally:
            self._defaults.pop()

    def spec(self, argv: list[str] | str, **options: Any) -> pb.JobSpec:
        """The JobSpec `submit` would send, with the `defaults()` blocks applied."""
        merged: dict[str, Any] = {}
        for block in self._defaults:
            merged.update(block)
        merged.update({k: v for k, v in options.items() if v is not None})
        if options.get("executor") == "local" and not options.get("image"):
            merged.pop("image", None)  # a default image is for the jobs that run in containers
        if isinstance(argv, str):
            argv = [argv]
        unknown = set(merged) - {"name", "image", "cpu", "memory", "env", "cwd", "priority", "reuse",
                                 "executor", "timeout", "cache_version", "labels", "program", "when", "retries",
                                 "memory_on_oom", "inputs", "mount_cwd"}
        if unknown:
            raise InvalidSpec(f"unknown option {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
        spec = pb.JobSpec(
            name=merged.get("name", ""), argv=[str(a) for a in argv], env=merged.get("env", {}),
            cwd=str(merged.get("cwd", "")), image=merged.get("image", ""),
            memory=parse_memory(merged.get("memory", 0)), priority=merged.get("priority", 0),
            no_reuse=not merged.get("reuse", True), executor=merged.get("executor", ""),
            timeout=merged.get("timeout", 0), cache_version=str(merged.get("cache_version", "")),
            labels=merged.get("labels", {}), program=merged.get("program", ""),
            when=merged["when"].to_json() if merged.get("when") is not None else "",
            retries=merged.get("retries", 0), memory_on_oom=merged.get("memory_on_oom", 0),
            inputs={name: self._input(name, value) for name, value in merged.get("inputs", {}).items()},
            mount_cwd=bool(merged.get("mount_cwd", False)),
        )
        if "cpu" in merged:
            spec.cpu = float(merged["cpu"])
        return spec

    def _input(self, name: str, value: Any) -> str:
        """How the controller names an input: another job's output, an upload, or as given."""
        if isinstance(value, Output):
            value = value.job
        if isinstance(value, Job):
            return f"job:{value.uuid}"
        if isinstance(value, Upload):
            if not value.digest:
                try:
                    value.digest = self.upload(value.path).digest
                except JobnestError as e:
                    raise type(e)(f"uploading {str(value.path)!r}: {e.problem}", field=f"inputs[{name!r}]") from None
            return f"data:{value.digest}"
        return str(value)  # "job:UUID" or "data:DIGEST"; the controller refuses anything else

    @contextlib.contextmanager
    def batch(self) -> Iterator["Batch"]:
        """Jobs submitted in the block go in one request when it ends; they may name each other
        (`inputs={"x": a.output}`, `when=a.succeeded`) before any of them exists."""
        batch = Batch(self)
        yield batch
        if batch.specs:
            for job, done in zip(batch.jobs, self.submit_many(batch.specs)):
                job.uuid, job._info = done.uuid, done._info

    def submit(self, argv: list[str] | str, **options: Any) -> "Job":
        """Submit one job; see DESIGN for the options. Returns at once with a handle.
        Threads that submit through one client at the same time share requests."""
        return self._singles.submit(self.spec(argv, **options))

    def submit_many(self, specs: list[pb.JobSpec], request_id: str | None = None) -> list["Job"]:
        """Submit a batch in one call; a retry with the same request id creates nothing twice."""
        self._ensure_driver()
        request = pb.SubmitRequest(request_id=request_id or uuidlib.uuid4().hex, jobs=specs)
        # Submitted with the driver's token, so the jobs are its children; all else goes as the user.
        response = self._unary("Submit", request, token=self._driver_token)
        return [Job(self, m.uuid, m) for m in response.jobs]

    def _ensure_driver(self, name: str = "", argv: builtins.list[str] | None = None, cwd: str = "") -> None:
        """Record this program as a driver job the first time it submits from outside any job
        (or, for the redirect helper's keeper, the caller it keeps)."""
        if not self._record_driver:
            return
        with self._driver_lock:
            if self._driver is not None:
                return
            spec = pb.JobSpec(name=name or os.path.basename(sys.argv[0] or "python"),
                              argv=argv or [sys.executable, *sys.argv], driver=True, driver_pid=os.getpid(),
                              driver_host=socket.gethostname(), cwd=cwd or os.getcwd())
            response = self._unary("Submit", pb.SubmitRequest(request_id=uuidlib.uuid4().hex, jobs=[spec]))
            self._driver = Job(self, response.jobs[0].uuid, response.jobs[0])
            self._driver_token = response.driver_token
            _finish_at_exit(self)
            threading.Thread(target=self._hold_lease, name="jobnest-driver-lease", daemon=True).start()

    def record_driver(self, name: str = "") -> "Job | None":
        """Record this program as its driver job now, named `name` (else on its first submit, after
        the program's file), so a watch of its tree can begin before anything is in it. Returns
        that job, or None inside a job (whose children its submits become)."""
        self._ensure_driver(name)
        return self._driver

    def _join_driver(self, uuid: str, token: str) -> None:
        """Submit as the driver job `uuid`, which another process records and keeps (the redirect
        helper's calls group under the job of their caller)."""
        self._driver, self._driver_token = Job(self, uuid), token

    def _hold_lease(self) -> None:
        """Renew the driver job's lease while this program runs: a driver that stops renewing
        (killed, or its machine gone) is marked lost, and its jobs go on."""
        while not self._finished:
            try:
                lease = self._unary("RenewLease", pb.RenewLeaseRequest(), token=self._driver_token).lease
            except JobnestError:
                lease = 3.0  # try again soon
            time.sleep(lease / 3)

    def tree(self) -> str:
        """The tree of the work this program did: under the job it runs as, or its driver job."""
        uuid = os.environ.get("JOBNEST_JOB") or (self._driver.uuid if self._driver else "")
        if not uuid:
            raise JobnestError("this program has submitted nothing and runs in no job: it has no tree")
        return Job(self, uuid).tree()

    @property
    def driver(self) -> "Job | None":
        """The job that records this program, once it has submitted something."""
        return self._driver

    def finish(self, exit_code: int = 0) -> None:
        """End this program's driver job now (else it ends when the client closes or the program exits)."""
        if self._driver is not None and not self._finished:
            self._finished = True
            self._unary("Finish", pb.FinishRequest(exit_code=exit_code), token=self._driver_token)

    # -- reading -------------------------------------------------------------------------------

    def job(self, uuid: str) -> "Job":
        return Job(self, uuid)

    def get(self, uuid: str) -> JobInfo:
        return JobInfo.from_message(self._unary("Get", pb.GetRequest(uuid=uuid)))

    def list(self, *, subtree: str = "", parent: str = "", states: list[str] | None = None, roots: bool = False,
             include_reused: bool = False, limit: int = 0, name: str = "", newest_first: bool = False
             ) -> Iterator[JobInfo]:
        """Jobs by subtree, parent, state and name (a pattern: `sample-*`); `limit` of them, the
        first in submit order or, with `newest_first`, the newest."""
        request = pb.ListRequest(subtree=subtree, parent=parent, states=states or [], roots=roots,
                                 include_reused=include_reused, limit=limit, name=name, newest_first=newest_first)
        for chunk in self._stream("List", request):
            yield from JobInfo.from_chunk(chunk)

    def watch(self, *, uuids: builtins.list[str] | None = None, subtree: str = "",
              subtrees: builtins.list[str] | None = None, timeout: float | None = None) -> "Stream":
        return self._stream("Watch", pb.WatchRequest(uuids=uuids or [], subtree=subtree, subtrees=subtrees or []),
                            timeout)

    def wait(self, uuids: builtins.list[str], timeout: float | None = None) -> None:
        """Block until every job in `uuids` has ended. A wait of more than a second shows its
        progress on stderr (see `Progress`)."""
        left: set[str] = set(uuids)
        if not left:
            return
        shown = Progress(dict.fromkeys(left, "queued"))
        try:
            for event in self.watch(uuids=builtins.list(left), timeout=timeout):
                shown.update(event.uuid, event.state)
                if event.state in TERMINAL:
                    left.discard(event.uuid)
                    if not left:
                        return
        finally:
            shown.close()

    def retry(self, uuid: str) -> "Job":
        """A new job of the same spec as `uuid` (a failed run is never reused, so it runs again)."""
        spec = self._unary("Get", pb.GetRequest(uuid=uuid)).spec
        if spec.driver:
            raise InvalidSpec("a driver is a program's own record: run the program again", field="uuid")
        return self.submit_many([spec])[0]

    def log_tail(self, uuid: str, stream: str = "stderr", size: int = 2000) -> str:
        """The last `size` bytes of a job's `stream`, as text (to show with its failure)."""
        return b"".join(c.data for c in self.log_chunks(uuid, stream=stream, offset=-size)).decode(errors="replace")

    def logs(self, uuid: str, follow: bool = False) -> Iterator[tuple[str, bytes]]:
        for chunk in self.log_chunks(uuid, follow):
            yield chunk.stream, chunk.data

    def log_chunks(self, uuid: str, follow: bool = False, *, stream: str = "", offset: int = 0, limit: int = 0
                   ) -> "Stream":
        """A job's logs from byte `offset` of each stream (negative: that many before its end), at
        most `limit` bytes of each, or followed until the job ends; each chunk says where it begins."""
        return self._stream("Logs", pb.LogsRequest(uuid=uuid, follow=follow, stream=stream, offset=offset,
                                                   limit=limit))

    def cancel(self, uuid: str, reason: str = "") -> builtins.list[str]:
        return builtins.list(self._unary("Cancel", pb.CancelRequest(uuid=uuid, reason=reason)).cancelled)

    def why(self, uuid: str) -> dict[str, Any]:
        r = self._unary("Why", pb.WhyRequest(uuid=uuid))
        return {"uuid": r.uuid, "reused": r.reused, "run": r.run_uuid, "explanation": r.explanation,
                "compared_run": r.compared_run_uuid or None, "differing": list(r.differing),
                "parts": {p.name: {"hash": p.hash, "compared": p.compared_hash or None} for p in r.parts}}

    def status(self) -> dict[str, Any]:
        r = self._unary("Status", pb.StatusRequest(), timeout=10, retry=False)  # a probe: is it there?
        return {"address": self.address, "version": r.version, "pid": r.pid, "store": r.store,
                "runs": dict(r.runs), "disk": dict(r.disk),
                "nodes": [{"name": n.name, "cpu": n.cpu_millis / 1000, "cpu_used": n.cpu_used / 1000,
                           "memory": n.memory, "memory_used": n.memory_used, "cpu_enforced": n.cpu_enforced}
                          for n in r.nodes]}

    def invalidate(self, run_uuid: str) -> None:
        """Mark a finished run's result bad: no job reuses it again."""
        self._unary("Invalidate", pb.InvalidateRequest(run_uuid=run_uuid))

    def pin(self, job_uuid: str, unpin: bool = False) -> None:
        """Keep a job's tree, its runs and their data from `collect` (or, with `unpin`, no longer)."""
        self._unary("Pin", pb.PinRequest(uuid=job_uuid, unpin=unpin))

    def collect(self, older_than: float, dry_run: bool = False) -> dict[str, int]:
        """Remove what nothing needs that ended more than `older_than` seconds ago (admins only);
        returns how many jobs, runs, data, blobs and programs went, and the bytes freed."""
        r = self._unary("Collect", pb.CollectRequest(older_than=older_than, dry_run=dry_run), timeout=3600,
                        retry=False)
        return {name: getattr(r, name) for name in ("jobs", "runs", "data", "blobs", "programs", "bytes")}

    def map(self, argv: builtins.list[str], items: Iterable[Any], **options: Any) -> builtins.list["Job"]:
        """One job per item, all in one batch: `{item}` in argv and in `name` replaced by it. A
        job is named `PROGRAM[ITEM]` (`bwa[sample-3]`) unless `name` is given."""
        name = options.pop("name", None) or (f"{Path(str(argv[0])).name}[{{item}}]" if argv else "")
        specs = [self.spec([a.replace("{item}", str(item)) for a in argv], **options,
                           name=name.replace("{item}", str(item))[:MAX_NAME]) for item in items]
        return self.submit_many(specs) if specs else []

    def create_token(self, name: str, expires_in: float = 0) -> str:
        """A new user token for the user `name` (admins only); it expires after `expires_in`
        seconds (0: never). Shown once: only its hash is kept."""
        return self._unary("CreateToken", pb.CreateTokenRequest(name=name, expires_in=expires_in), retry=False).token

    def tokens(self) -> builtins.list[dict[str, Any]]:
        """The user tokens, by name (admins only)."""
        return [{"name": t.name, "created_at": t.created_at, "expires_at": t.expires_at or None}
                for t in self._unary("ListTokens", pb.ListTokensRequest()).tokens]

    def revoke_token(self, name: str) -> None:
        """Revoke user `name`'s token (admins only); its jobs stay, owned by `name`."""
        self._unary("RevokeToken", pb.RevokeTokenRequest(name=name))

    # -- data ----------------------------------------------------------------------------------

    def upload(self, path: str | os.PathLike[str]) -> Upload:
        """Send a local file or folder to the controller (only what it lacks); usable as an input."""
        root = Path(path)
        entries = walk(root)
        token = self._send({e.digest: (root / e.path if root.is_dir() else root, e) for e in entries if not e.link})
        manifest = pb.Manifest(entries=entries, file="" if root.is_dir() else root.name)
        return Upload(root, self._unary("PutManifest", manifest, token=token, stub=self._data).digest)

    def _send(self, files: dict[str, tuple[Path, pb.ManifestEntry]]) -> str | None:
        """Send the blobs the controller lacks, by digest: each file's chunks. They go as the jobs
        that read them are submitted (a driver's, within its scope); returns the token used."""
        self._ensure_driver()
        token = self._driver_token
        size = sum(entry.size for _, entry in files.values())
        missing = self._unary("Missing", pb.BlobRefs(digests=list(files), size=size), token=token,
                              stub=self._data).digests
        for digest in missing:
            self._unary("Upload", chunks(*files[digest]), timeout=None, token=token, stub=self._data,
                        retry=False)  # a stream: spent
        return token

    def submit_program(self, program: str | os.PathLike[str], *args: Any, python: str = "",
                       **options: Any) -> "Job":
        """Run the Python `program` as a runner job in a copy of its folder, as `jobnest submit`
        does. The folder goes once per content, streamed (its `.jobnestignore` leaves files out),
        and is part of the runner's signature; its children get none of it but what they name.
        `python` runs it: by default `python` in an image, else this program's own Python."""
        path = Path(program).resolve()
        options["name"] = options.get("name") or path.name
        spec = self.spec(["python", path.name, *map(str, args)], **options)
        spec.argv[0] = python or ("python" if spec.image else sys.executable)
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "program.tar.gz"
            with open(archive, "wb") as f:
                program_archive(path.parent, f)
            entry = pb.ManifestEntry(digest=file_sha256(archive), size=archive.stat().st_size)
            self._send({entry.digest: (archive, entry)})
        spec.program = entry.digest
        return self._singles.submit(spec)

    def manifest(self, digest: str) -> pb.Manifest:
        return self._unary("GetManifest", pb.BlobRef(digest=digest), stub=self._data)

    def read_blob(self, digest: str, manifest: str) -> Iterator[bytes]:
        """The bytes of one blob of the data `manifest` (which the caller may read)."""
        for chunk in self._stream("Download", pb.BlobRef(digest=digest, manifest=manifest), stub=self._data):
            yield chunk.data

    def download(self, digest: str, dest: str | os.PathLike[str]) -> Path:
        """Fetch stored data (an output or an upload) into the folder `dest`."""
        return lay_out(self.manifest(digest), Path(dest), lambda blob: self.read_blob(blob, digest))


class Stream(Iterator[Any]):
    """The messages of a server stream, which any thread may `cancel()`; one dropped unread is
    cancelled too, so a caller that stops reading does not hold it open."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as e:
            if self._cancelled and e.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise from_rpc_error(e) from None

    def cancel(self) -> None:
        self._cancelled = True
        self._call.cancel()

    def __del__(self) -> None:
        self._call.cancel()


class Batch:
    """Jobs to submit in one request (`Client.batch`); their handles work once it is sent."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.specs: list[pb.JobSpec] = []
        self.jobs: list[Job] = []

    def submit(self, argv: list[str] | str, **options: Any) -> "Job":
        job = Job(self.client, f"@{len(self.specs)}")  # how the others of the batch name it
        self.specs.append(self.client.spec(argv, **options))
        self.jobs.append(job)
        return job


class _Waiting:
    """One `submit()` in a `_Gathered` queue: its job, then its outcome."""

    def __init__(self, spec: pb.JobSpec) -> None:
        self.spec = spec
        self.outcome: Job | JobnestError | None = None
        self.turn = threading.Event()  # set once it is served, or when it is to send the next request


class _Gathered:
    """Single submits of several threads, sent together: while one request is in flight, the
    submits that come meanwhile wait, and the first of them then sends them all in one request.
    A request refused (a bad job among them, which stores nothing) is sent again job by job, so
    each job gets its own answer. One thread alone sends one job per request, as before."""

    RETRY_ALONE = (InvalidSpec, NotFound, PermissionDenied, Conflict, Unauthenticated)

    def __init__(self, send: Callable[[list[pb.JobSpec]], list[Job]]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._queue: list[_Waiting] = []
        self._sending = False
        self._crowd = 1  # jobs in the last request

    def submit(self, spec: pb.JobSpec) -> Job:
        me = _Waiting(spec)
        with self._lock:
            self._queue.append(me)
            waits, self._sending = self._sending, True
        if waits:
            try:
                me.turn.wait()
            except BaseException:  # Ctrl-C while waiting: it leaves the queue, and hands on its turn
                self._leave(me)
                raise
        if me.outcome is None:  # its turn: it sends all that wait, itself first
            if self._crowd > 1:
                time.sleep(0)  # lets the threads the last request served queue up behind this one
            with self._lock:
                group, self._queue = self._queue, []
                self._crowd = len(group)
            try:
                self._serve(group)
            finally:
                with self._lock:
                    if self._queue:
                        self._queue[0].turn.set()
                    else:
                        self._sending = False
        if isinstance(me.outcome, JobnestError):
            raise me.outcome
        assert me.outcome is not None
        return me.outcome

    def _leave(self, me: _Waiting) -> None:
        with self._lock:
            if me not in self._queue:
                return  # taken into a request already: it is sent
            self._queue.remove(me)
            if me.turn.is_set():  # it was to send the next request
                if self._queue:
                    self._queue[0].turn.set()
                else:
                    self._sending = False

    def _serve(self, group: list[_Waiting]) -> None:
        try:
            try:
                for waiting, job in zip(group, self._send([w.spec for w in group])):
                    waiting.outcome = job
            except self.RETRY_ALONE:
                if len(group) == 1:
                    raise
                for waiting in group:
                    try:
                        waiting.outcome = self._send([waiting.spec])[0]
                    except JobnestError as e:
                        waiting.outcome = e
        except JobnestError as e:
            for waiting in group:
                waiting.outcome = waiting.outcome or e
        except BaseException as e:  # not a controller's answer (a KeyboardInterrupt): the others learn of it too
            for waiting in group:
                waiting.outcome = waiting.outcome or JobnestError(f"submit interrupted: {e!r}")
            raise
        finally:
            for waiting in group:
                waiting.turn.set()


class Job:
    """A handle on one job; its properties ask the controller each time."""

    def __init__(self, client: Client, uuid: str, message: pb.Job | None = None) -> None:
        self.client = client
        self.uuid = uuid
        self._info = JobInfo.from_message(message) if message is not None else None

    def __repr__(self) -> str:
        return f"<Job {self.uuid[:8]} {self._info.name if self._info else ''}>"

    @property
    def info(self) -> JobInfo:
        self._info = self.client.get(self.uuid)
        return self._info

    @property
    def name(self) -> str:
        return (self._info or self.info).name

    @property
    def state(self) -> str:
        return self.info.state

    @property
    def exit_code(self) -> int | None:
        return self.info.exit_code

    @property
    def reused(self) -> bool:
        return (self._info or self.info).reused

    # Conditions on this job, for `submit(..., when=...)`.
    @property
    def succeeded(self) -> Condition:
        return Condition.of(self.uuid, "succeeded")

    @property
    def failed(self) -> Condition:
        return Condition.of(self.uuid, "failed")

    @property
    def cancelled(self) -> Condition:
        return Condition.of(self.uuid, "cancelled")

    @property
    def done(self) -> Condition:
        return Condition.of(self.uuid, "done")

    @property
    def output(self) -> Output:
        """The job's output: an input for other jobs, or files to download."""
        return Output(self)

    def result(self, timeout: float | None = None) -> Any:
        """The JSON value its run wrote to `result.json` (None if none); waits for the job to end."""
        info = self.wait(timeout).info
        if info.state != "succeeded":
            raise Conflict(f"job {self.uuid} ended {info.state} ({info.reason}): it has no result", field="job")
        entry = next((e for e in self.client.manifest(info.output).entries if e.path == "result.json"), None)
        if entry is None:
            return None
        return json.loads(b"".join(self.client.read_blob(entry.digest, info.output)))

    def wait(self, timeout: float | None = None) -> "Job":
        self.client.wait([self.uuid], timeout)
        return self

    def logs(self, follow: bool = False, stream: str | None = "stdout") -> str:
        """The job's output as text: stdout by default, stderr with stream="stderr", both with None."""
        return b"".join(d for s, d in self.client.logs(self.uuid, follow) if stream in (None, s)).decode(
            errors="replace")

    def cancel(self) -> list[str]:
        return self.client.cancel(self.uuid)

    def tree(self) -> str:
        """This job's tree as `jobnest tree` draws it, with reused work and a summary line."""
        from ._render import tree_with_summary  # the renderer builds on this module

        return tree_with_summary(self.client.list(subtree=self.uuid, include_reused=True), self.uuid)

    def children(self) -> list["Job"]:
        return [Job(self.client, i.uuid) for i in self.client.list(parent=self.uuid)]


def race(jobs: list[Job], accept: Callable[[Job], bool] | None = None, timeout: float | None = None) -> Job | None:
    """Keep the first job to end that `accept` takes (by default: it succeeded) and cancel the others.

    Returns the winner, or None if none was accepted. The losers' results are never reused: the
    ones still going are cancelled, and finished ones are invalidated.
    """
    if not jobs:
        raise InvalidSpec("needs at least one job", field="jobs")
    client = jobs[0].client
    accepted = accept or (lambda job: job.state == "succeeded")
    waiting = {job.uuid: job for job in jobs}
    winner = None
    for event in client.watch(uuids=list(waiting), timeout=timeout):
        if event.state in TERMINAL and event.uuid in waiting:
            job = waiting.pop(event.uuid)
            if accepted(job):
                winner = job
                break
            if not waiting:
                break
    for loser in jobs:
        if loser is winner:
            continue
        if loser.uuid in waiting:
            loser.cancel()
        if loser.info.state == "succeeded":
            client.invalidate(loser.info.run_uuid)
    return winner


def connect(address: str | None = None, token: str | None = None, *, home: str | None = None,
            driver: bool = True) -> Client:
    """A client for the controller in charge here (see the module docstring).

    `driver=False` keeps this program from being recorded as a job (the CLI does that).
    """
    address = address or os.environ.get("JOBNEST_CONTROLLER", "")
    token = token if token is not None else os.environ.get("JOBNEST_TOKEN", "")
    if not address:
        home_dir = Path(home or os.environ.get("JOBNEST_HOME") or Path.home() / ".jobnest")
        address = f"unix://{home_dir / 'controller.sock'}"
        ensure_local_controller(home_dir)
    return Client(address, token, driver=driver)


def current_job() -> Job | None:
    """The job this program runs as, or None outside any job."""
    uuid = os.environ.get("JOBNEST_JOB")
    return Job(connect(), uuid) if uuid else None


def ensure_local_controller(home: Path, idle_timeout: float | None = None, wait: float = 30) -> None:
    """Start the local controller for `home` unless one answers already.

    It exits by itself after `idle_timeout` seconds with no calls and no live runs (0: never).
    """
    idle_timeout = LOCAL_IDLE_TIMEOUT if idle_timeout is None else idle_timeout
    sock = home / "controller.sock"
    if local_controller_healthy(sock):
        return
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(home / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if local_controller_healthy(sock):
            return
        log = open(home / "controller.log", "ab")
        subprocess.Popen(
            [sys.executable, "-m", "jobnest_controller", "--home", str(home), "--idle-timeout", str(idle_timeout)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env={k: v for k, v in os.environ.items() if k not in ("JOBNEST_CONTROLLER", "JOBNEST_TOKEN")},
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if local_controller_healthy(sock):
                return
            time.sleep(0.05)
    tail = (home / "controller.log").read_text(errors="replace")[-2000:]
    raise Unavailable(f"the local controller in {home} did not start; its log ends:\n{tail}")


def local_controller_healthy(sock: Path, timeout: float = 2.0) -> bool:
    if not sock.exists():
        return False
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def _target(address: str) -> str:
    for prefix in ("grpc://", "http://", "tcp://"):
        address = address.removeprefix(prefix)
    return address


class Progress:
    """A waiting program's progress, on stderr: a line redrawn in place on a terminal, else a
    plain line at most every `EVERY` seconds. Only a wait of more than a second shows it, and
    only outside a job (a job's stderr is its log), unless JOBNEST_PROGRESS says otherwise (1/0)."""

    AFTER, EVERY = 1.0, 10.0

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states
        self.started = time.monotonic()
        self.last, self.drawn = 0.0, ""
        self.tty = sys.stderr.isatty()
        wanted = os.environ.get("JOBNEST_PROGRESS")
        self.on = wanted == "1" if wanted in ("0", "1") else not os.environ.get("JOBNEST_JOB")

    def update(self, uuid: str, state: str) -> None:
        self.states[uuid] = state
        now = time.monotonic()
        if self.on and now - self.started > self.AFTER and (self.tty or now - self.last >= self.EVERY):
            self._draw(now)

    def _draw(self, now: float) -> None:
        from ._render import progress  # the renderer builds on this module

        line = progress(self.states.values())
        if line != self.drawn:
            sys.stderr.write(f"\r\x1b[K{line}" if self.tty else f"{line}\n")
            sys.stderr.flush()
            self.drawn, self.last = line, now

    def close(self) -> None:
        """The last state, once anything was shown."""
        if self.drawn:
            self._draw(time.monotonic())
            if self.tty:
                sys.stderr.write("\n")


class _Exit:
    """How this program is ending, for its driver job: `sys.exit(n)` is seen here (Python keeps a
    SystemExit's code from atexit), an uncaught exception is 1, Ctrl-C 130, SIGTERM 143."""

    code = 0
    watched = False
    driver = ""  # the driver job's uuid, for what Ctrl-C says

    @classmethod
    def watch(cls) -> None:
        if cls.watched:
            return
        cls.watched = True
        previous_hook, real_exit = sys.excepthook, sys.exit

        def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
            cls.code = 130 if issubclass(kind, KeyboardInterrupt) else 1
            if issubclass(kind, KeyboardInterrupt) and cls.driver:  # what happens next, not a traceback
                print(f"\njobnest: interrupted. The jobs this program submitted go on: run it again to pick up "
                      f"where it left off (what finished is reused), or stop them with `jobnest cancel "
                      f"{cls.driver[:8]}`.", file=sys.stderr)
                return
            previous_hook(kind, value, tb)

        def exit(code: object = None) -> NoReturn:
            cls.code = code if isinstance(code, int) else 0 if code is None else 1  # a message: 1, as Python
            real_exit(code)

        sys.excepthook, sys.exit = hook, exit  # type: ignore[assignment]
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def _finish_at_exit(client: Client) -> None:
    """End the driver job when the program ends, with the program's exit code (see `_Exit`)."""
    _Exit.watch()
    _Exit.driver = client.driver.uuid if client.driver else ""

    def finish() -> None:
        with contextlib.suppress(JobnestError):
            client.finish(_Exit.code)

    atexit.register(finish)
