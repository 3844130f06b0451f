"""The gRPC service: authenticates each call, checks its scope, and hands it to the store.

`jobnest.errors` exceptions become gRPC statuses here and nowhere else (`_rpc`).
"""

import contextlib
import dataclasses
import functools
import getpass
import hashlib
import hmac
import inspect
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from jobnest.errors import (FIELD_KEY, InvalidSpec, JobnestError, NotFound, PermissionDenied, ResourceExhausted,
                            Unauthenticated)
from jobnest.v1 import jobnest_pb2 as pb
from jobnest.v1 import jobnest_pb2_grpc as pb_grpc

from . import conditions, confine, retention, specs
from .data import CorruptData, Data
from .executors.base import Executor
from .programs import Programs
from .reconciler import HELD, Reconciler
from .scheduler import charge_all, cores
from .states import State
from .store import DRIVER, LIST_FIELDS, VIEW, Caller, Store

log = logging.getLogger(__name__)
TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-.]{8,200}$")
LOG_CHUNK = 64 * 1024
LIST_CHUNK_BYTES = 4 * 2**20  # a listing's chunk holds about this much at most
MAX_REQUEST_ID, MAX_REASON = 200, 1000  # characters
MAX_EXPIRY = 10 * 365 * 86400.0  # seconds a token may be given
# A server's threads: streams may hold at most MAX_STREAMS of them, so unary calls keep the rest.
WORKERS, MAX_STREAMS, MAX_STREAMS_PER_CALLER = 256, 192, 64
MAX_SUBTREES = 1000  # in one Watch
LOG_POLL = 0.2  # seconds between reads of a followed log at most


class Activity:
    """When the service was last used, for the idle shutdown of a local controller: never while
    a call is in flight (a Watch, or an upload of many gigabytes)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = clock()
        self.calls = 0
        self._lock = threading.Lock()

    def call(self, delta: int) -> None:
        with self._lock:
            self.calls += delta
            self.last = self.clock()

    def idle_for(self) -> float:
        return 0.0 if self.calls else self.clock() - self.last


class Streams:
    """Open streams (Watch, Logs, List, Download), limited per caller and in all: each holds a
    server thread while open, and unary calls must always find one free."""

    def __init__(self, total: int = MAX_STREAMS, per_caller: int = MAX_STREAMS_PER_CALLER) -> None:
        self.total = total
        self.per_caller = per_caller
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def held(self, context: grpc.ServicerContext) -> Iterator[None]:
        key = dict(context.invocation_metadata()).get("authorization", "")  # a token, checked later
        with self._lock:
            if self._open.get(key, 0) >= self.per_caller:
                raise ResourceExhausted(f"{self.per_caller} streams of this caller are open, the most one caller "
                                        "may hold: close some")
            if sum(self._open.values()) >= self.total:
                raise ResourceExhausted(f"{self.total} streams are open, the most this controller serves at once")
            self._open[key] = self._open.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._open[key] -= 1
                if not self._open[key]:
                    del self._open[key]


def _abort(context: grpc.ServicerContext, error: JobnestError) -> None:
    """End the call with the error's status; its field also goes as trailing metadata, which the
    SDK turns back into the error's `field`."""
    if error.field:
        context.set_trailing_metadata(((FIELD_KEY, error.field.encode()),))  # binary: a field may name any key
    context.abort(error.code, str(error))


def _rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Map jobnest errors to statuses for unary and streaming methods alike."""

    @functools.wraps(method)
    def unary(self: "JobService", request: Any, context: grpc.ServicerContext) -> Any:
        self.activity.call(+1)
        try:
            return method(self, request, context)
        except JobnestError as e:
            _abort(context, e)
        except Exception:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the controller's log")
        finally:
            self.activity.call(-1)

    @functools.wraps(method)
    def stream(self: "JobService", request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self.activity.call(+1)
        try:
            with self.streams.held(context):
                yield from method(self, request, context)
        except JobnestError as e:
            _abort(context, e)
        except Exception:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the controller's log")
        finally:
            self.activity.call(-1)

    return stream if inspect.isgeneratorfunction(method) else unary


class JobService(pb_grpc.JobServiceServicer):
    def __init__(self, store: Store, executors: dict[str, Executor], programs: Programs, data: Data, *,
                 admin_token: str, mount_roots: list[str], forbidden: list[str], runs_root: str, driver_lease: float,
                 default_executor: str, wake: Callable[[], None], activity: Activity, trust_local: bool,
                 reconciler: Reconciler, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.executors = executors
        self.programs = programs
        self.data = data
        self.admin_token = admin_token
        self.mount_roots = mount_roots  # host folders jobs submitted here may mount (see `confine`)
        self.forbidden = forbidden
        self.runs_root = runs_root  # where runs' folders are: a job's children may mount its own
        self.driver_lease = driver_lease  # seconds a driver's lease lasts from each renewal
        self.default_executor = default_executor
        self.wake = wake
        self.activity = activity
        self.streams = Streams()
        self.trust_local = trust_local  # served on the owner's socket: no token means its owner
        self.reconciler = reconciler
        self.waiting = reconciler.waiting_reason  # run uuid -> why the scheduler has not started it
        self.clock = clock

    # -- who is calling ------------------------------------------------------------------------

    def caller(self, context: grpc.ServicerContext) -> Caller:
        metadata = dict(context.invocation_metadata())
        header = metadata.get("authorization", "")
        token = header.removeprefix("Bearer ").strip()
        if header and not TOKEN_RE.match(token):
            raise Unauthenticated("this is no token jobnest made (check JOBNEST_TOKEN, or --token): it has other "
                                  "characters than a token's", field="authorization")
        if token:
            if self.admin_token and hmac.compare_digest(token, self.admin_token):
                return Caller("admin", "admin")
            return self.store.authenticate(token, self.clock())
        if self.trust_local:
            return Caller("admin", _login())
        raise Unauthenticated("a token is required here (only the owner's socket takes none)", field="authorization")

    def readable(self, caller: Caller, digest: str, field: str) -> dict[str, Any]:
        """The manifest of the data `digest` names, if the caller may read it (else as if absent)."""
        if self.store.may_read(caller, digest):
            with contextlib.suppress(NotFound):
                return self.data.manifest(digest)
        raise NotFound(f"no data {digest[:80]} is stored here", field=field)

    def _confine(self, caller: Caller, spec: dict[str, Any], i: int) -> None:
        """A container job mounts a host folder, and a local job works in one of the controller's,
        only where `confine` allows; a job's children may use its own run folder."""
        own = [os.path.join(self.runs_root, caller.run_uuid)] if caller.run_uuid else []
        try:
            if spec.get("mount_cwd") and spec["executor"] != "local":  # a local job sees the host anyway
                spec["mount_root"] = confine.mount_root(spec["cwd"], self.mount_roots + own, self.forbidden)
            elif spec["executor"] == "local" and spec["cwd"] and confine.inside(spec["cwd"], self.forbidden):
                confine.mount_root(spec["cwd"], own, self.forbidden, field="cwd")
        except PermissionDenied as e:
            raise PermissionDenied(e.problem, field=f"jobs[{i}].{e.field}") from None

    def _scoped(self, caller: Caller, ref: str) -> tuple[str, str]:
        """The full uuid and path of the job `ref` names, if the caller may see it."""
        if not ref:
            raise InvalidSpec("must name a job", field="uuid")
        uuid = self.store.resolve(ref, caller)
        path, owner = self.store.job_scope(uuid)
        caller.check_scope(uuid, path, owner)
        return uuid, path

    # -- calls ---------------------------------------------------------------------------------

    @_rpc
    def Submit(self, request: pb.SubmitRequest, context: grpc.ServicerContext) -> pb.SubmitResponse:
        caller = self.caller(context)
        if not request.jobs:
            raise InvalidSpec("must hold at least one job", field="jobs")
        if len(request.request_id) > MAX_REQUEST_ID or "\0" in request.request_id:
            raise InvalidSpec(f"must be at most {MAX_REQUEST_ID} characters, none of them NUL", field="request_id")
        nodes = [n for ex in self.executors.values() for n in ex.nodes()]
        max_cpu = max((n.cpu_millis for n in nodes), default=0)
        max_memory = max((n.memory for n in nodes), default=0)
        job_specs = [specs.validate(m, i, max_cpu_millis=max_cpu, max_memory=max_memory,
                                    executors=set(self.executors), default_executor=self.default_executor)
                     for i, m in enumerate(request.jobs)]
        images: dict[tuple[str, str], str] = {}
        for i, (spec, msg) in enumerate(zip(job_specs, request.jobs)):
            named = {}  # a reference as given -> the full uuid; "@N" stays for the store
            for ref in sorted(conditions.jobs_of(spec["when"])) if "when" in spec else ():
                try:
                    named[ref] = ref if ref.startswith("@") else self._scoped(caller, ref)[0]
                except (InvalidSpec, NotFound, PermissionDenied) as e:
                    raise type(e)(f"names job {ref!r}: {e.problem}",
                                  field=f"jobs[{i}].{specs.ref_field(spec, ref)}") from None
            specs.rename_refs(spec, named.__getitem__)
            self._confine(caller, spec, i)
            for name, ref in spec.get("inputs", {}).items():
                if "data" in ref:
                    self.readable(caller, ref["data"], f"jobs[{i}].inputs[{name!r}]")
            try:
                if msg.program_archive:
                    spec["program"] = self.programs.store(msg.program_archive)
                    self.store.hold(caller, [spec["program"]])
                elif spec["program"]:
                    self.programs.check(spec["program"])
                    if not self.store.held(caller, [spec["program"]]):  # as if absent: a digest is no key
                        raise InvalidSpec(f"no program {spec['program']} is stored here", field="program")
            except InvalidSpec as e:
                raise InvalidSpec(e.problem, field=f"jobs[{i}].{e.field}") from None
            key = (spec["executor"], spec["image"])
            if key not in images and spec["executor"] in self.executors:
                try:  # once per image and request: a batch of 1000 jobs names a handful of images
                    images[key] = self.executors[spec["executor"]].resolve_image(spec["image"])
                except InvalidSpec as e:
                    raise InvalidSpec(e.problem, field=f"jobs[{i}].image") from None
            spec["image_id"] = images.get(key, "")
        if any(s.get("driver") for s in job_specs):
            job_specs[0]["lease"] = self.driver_lease
            if len(job_specs) != 1:
                raise InvalidSpec("a driver is registered on its own, not in a batch", field="jobs")
            if caller.kind == "job":
                raise PermissionDenied("a job submits jobs, not drivers", field="jobs[0].driver")
        body = hashlib.sha256(b"".join(m.SerializeToString(deterministic=True) for m in request.jobs)).hexdigest() \
            if request.request_id else ""
        jobs, driver_token = self.store.submit(caller, request.request_id, job_specs, self.clock(), body)
        self.wake()
        return pb.SubmitResponse(jobs=[job_message(r, self.waiting) for r in jobs],
                                 driver_token=driver_token or "")

    @_rpc
    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> pb.Job:
        caller = self.caller(context)
        uuid, _ = self._scoped(caller, request.uuid)
        job = self.store.get_job(uuid)
        msg = job_message(job, self.waiting, with_spec=True)
        msg.attempts.extend(pb.Attempt(attempt=a["attempt"], has_exit_code=a["exit_code"] is not None,
                                       exit_code=a["exit_code"] or 0, reason=a["reason"], memory=a["memory"],
                                       node=a["node"], started_at=a["started_at"] or 0.0,
                                       finished_at=a["finished_at"])
                            for a in self.store.attempts_of(job["run_uuid"]))
        if msg.reason.startswith("waiting for cpu"):
            msg.reason += self._runner_note(job["spawned_by_job_uuid"])
        if msg.reason == HELD:
            msg.reason = self._held_reasons(caller, [uuid]).get(uuid, msg.reason)
        return msg

    def _held_reasons(self, caller: Caller, uuids: Sequence[str]) -> dict[str, str]:
        """What each held job of `uuids` waits for, its jobs named as `caller` may see them:
        `waiting until job align (1a2b3c4d) succeeded and not job qc (9f8e7d6c) failed`."""
        if not uuids:
            return {}
        whens = {uuid: when for uuid, when in self.store.conditions_of(uuids).items() if when}
        named = self.store.names_of(set().union(*map(conditions.jobs_of, whens.values())))

        def label(uuid: str) -> str:
            name, path, owner = named.get(uuid, ("", "", ""))
            return f"job {name} ({uuid[:8]})" if name and caller.sees(path, owner) else f"job {uuid[:8]}"
        return {uuid: f"waiting until {conditions.describe(when, label)}" for uuid, when in whens.items()}

    def _waiting_in(self, caller: Caller) -> Callable[[Sequence[str], Sequence[str]], list[str]]:
        """Why each queued job of a listing waits, from (job uuids, run uuids): the scheduler's
        reason, or for a held one what it waits for."""
        def waiting(jobs: Sequence[str], runs: Sequence[str]) -> list[str]:
            reasons = [self.waiting(run) for run in runs]
            held = self._held_reasons(caller, [job for job, why in zip(jobs, reasons) if why == HELD])
            return [held.get(job, why) for job, why in zip(jobs, reasons)]
        return waiting

    def _runner_note(self, parent: str) -> str:
        """Which runner above a job waiting for cpu holds cpu without waiting on its children."""
        while parent:
            job = self.store.get_job(parent)
            if job["state"] == "running" and job["executor"] != DRIVER and not self.reconciler.lends(job["run_uuid"]):
                return (f"; its runner {job['name']} ({job['uuid'][:8]}) holds {cores(job['cpu_millis'])} cores and is "
                        "not waiting on its children (a job lends its cpu to its subtree while it waits on it "
                        "with wait())")
            parent = job["spawned_by_job_uuid"]
        return ""

    @_rpc
    def List(self, request: pb.ListRequest, context: grpc.ServicerContext) -> Iterator[pb.ListChunk]:
        caller = self.caller(context)
        if request.limit < 0:
            raise InvalidSpec(f"must not be negative, got {request.limit}", field="limit")
        unknown = set(request.states) - {s.value for s in State}
        if unknown:
            raise InvalidSpec(f"unknown state {sorted(unknown)[0]!r} (known: {', '.join(s.value for s in State)})",
                              field="states")
        subtree = self._scoped(caller, request.subtree)[1] if request.subtree else None
        parent = self._scoped(caller, request.parent)[0] if request.parent else None
        if subtree is None and caller.kind == "job":
            subtree = caller.path
        if len(request.name) > specs.MAX_NAME or "\0" in request.name:
            raise InvalidSpec(f"must be at most {specs.MAX_NAME} characters, none of them NUL", field="name")
        chunks = self.store.list_jobs(subtree_path=subtree, parent=parent, states=list(request.states),
                                      roots=request.roots, limit=request.limit,
                                      owner=None if caller.kind == "admin" else caller.name,
                                      name=request.name, newest_first=request.newest_first)
        waiting = self._waiting_in(caller)
        if not request.include_reused:
            for rows in chunks:
                yield from list_chunks(rows, waiting)
            return
        # A reused job's work was done under the job that started its run: list that subtree too,
        # when the caller may see it (a job token sees only its own subtree).
        listed: set[str] = set()
        origins: list[str] = []
        while True:
            for rows in chunks:
                rows = [r for r in rows if r.uuid not in listed]
                listed.update(r.uuid for r in rows)
                origins += [r.run_origin_job_uuid for r in rows if r.reused]
                yield from list_chunks(rows, waiting)
            visible = [p for p, owner in map(self.store.job_scope, set(origins) - listed) if caller.sees(p, owner)]
            if not visible:
                return
            origins = []
            chunks = (rows for path in visible for rows in self.store.list_jobs(subtree_path=path))

    @_rpc
    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        caller = self.caller(context)
        uuids = [self._scoped(caller, u)[0] for u in request.uuids]
        if len(request.subtrees) > MAX_SUBTREES:
            raise InvalidSpec(f"at most {MAX_SUBTREES} in one watch, got {len(request.subtrees)}", field="subtrees")
        tops = dict(self._scoped(caller, ref) for ref in [request.subtree, *request.subtrees] if ref)
        # The subtrees' paths, none inside another: an event under one is sent once.
        paths = sorted(set(tops.values()))
        paths = tuple(p for i, p in enumerate(paths) if not any(p.startswith(q) for q in paths[:i]))
        if not uuids and not paths:
            raise InvalidSpec("give job uuids or a subtree to watch", field="uuids")
        events = self.store.bus.subscribe()  # before the snapshot, so no change falls between
        # A job waiting on jobs of its subtree (a runner in wait()) lends them its cpu meanwhile.
        lends = caller.kind == "job" and bool(caller.run_uuid) and any(u != caller.job_uuid for u in uuids)
        if lends:
            self.reconciler.lend(caller.run_uuid, +1)
            self.wake()
        try:
            watched = set(uuids)
            open_uuids = set(uuids)  # a watch of uuids ends once they have all ended
            for uuid in [*uuids, *(u for u in tops if u not in watched)]:  # a subtree's top job too: the watch is on
                job = job_message(self.store.get_job(uuid), self.waiting)
                yield _event(uuid, job.state, job.reason, job.exit_code if job.has_exit_code else None, initial=True)
                if State(job.state).terminal:
                    open_uuids.discard(uuid)
            while context.is_active() and (open_uuids or paths):
                try:
                    batch = events.get(timeout=0.5)
                except queue.Empty:
                    continue
                for e in batch:
                    if e.uuid in watched or e.path.startswith(paths):
                        yield _event(e.uuid, e.state, e.reason, e.exit_code, parent=e.parent)
                        if State(e.state).terminal:
                            open_uuids.discard(e.uuid)
        finally:
            if lends:
                self.reconciler.lend(caller.run_uuid, -1)
            self.store.bus.unsubscribe(events)

    @_rpc
    def Cancel(self, request: pb.CancelRequest, context: grpc.ServicerContext) -> pb.CancelResponse:
        caller = self.caller(context)
        uuid, _ = self._scoped(caller, request.uuid)
        if len(request.reason) > MAX_REASON or "\0" in request.reason:
            raise InvalidSpec(f"must be at most {MAX_REASON} characters, none of them NUL", field="reason")
        reason = request.reason or f"cancelled by {caller.name if caller.kind != 'job' else 'job ' + str(caller.job_uuid)}"
        cancelled = self.store.cancel(uuid, reason, self.clock())
        self.wake()
        return pb.CancelResponse(cancelled=cancelled)

    @_rpc
    def Logs(self, request: pb.LogsRequest, context: grpc.ServicerContext) -> Iterator[pb.LogChunk]:
        caller = self.caller(context)
        uuid, _ = self._scoped(caller, request.uuid)
        if request.stream not in ("", "stdout", "stderr"):
            raise InvalidSpec(f"must be stdout or stderr, got {request.stream[:40]!r}", field="stream")
        if request.limit < 0 or (request.limit and request.follow):
            raise InvalidSpec("must not be negative, nor given with follow", field="limit")
        streams = [request.stream] if request.stream else ["stdout", "stderr"]
        offsets: dict[str, int] = {}
        ends = {stream: request.limit or None for stream in streams}  # bytes left to send
        events = self.store.bus.subscribe() if request.follow else None
        try:
            while context.is_active():
                run = self.store.run_of(uuid)
                done = State(run["state"]).terminal
                executor = self.executors.get(run["executor"])
                paths = executor.log_paths(run) if executor is not None else {}
                for stream in streams:
                    if stream not in paths:
                        continue
                    if stream not in offsets:
                        offsets[stream] = _start(paths[stream], request.offset)
                    for at, data in _read_from(paths[stream], offsets, stream, ends):
                        yield pb.LogChunk(stream=stream, data=data, offset=at)
                if done or not request.follow:
                    return
                # Read again in LOG_POLL, or at once when this job changes (others' changes wait).
                deadline = time.monotonic() + LOG_POLL
                while (left := deadline - time.monotonic()) > 0:
                    try:
                        if any(e.uuid == uuid for e in events.get(timeout=left)):  # type: ignore[union-attr]
                            break
                    except queue.Empty:
                        break
        finally:
            if events is not None:
                self.store.bus.unsubscribe(events)

    @_rpc
    def Why(self, request: pb.WhyRequest, context: grpc.ServicerContext) -> pb.WhyResponse:
        caller = self.caller(context)
        uuid, _ = self._scoped(caller, request.uuid)
        why = self.store.why(uuid, caller)
        compared = why.get("compared") or {"uuid": "", "parts": {}}
        return pb.WhyResponse(
            uuid=uuid, reused=why["reused"], run_uuid=why["run_uuid"], explanation=why["explanation"],
            compared_run_uuid=compared["uuid"], differing=why.get("differing", []),
            parts=[pb.SignaturePart(name=k, hash=v, compared_hash=compared["parts"].get(k, ""))
                   for k, v in why["parts"].items()],
        )

    @_rpc
    def Finish(self, request: pb.FinishRequest, context: grpc.ServicerContext) -> pb.FinishResponse:
        self.store.finish_driver(self.caller(context), request.exit_code, self.clock())
        return pb.FinishResponse()

    @_rpc
    def RenewLease(self, request: pb.RenewLeaseRequest, context: grpc.ServicerContext) -> pb.RenewLeaseResponse:
        self.store.renew_lease(self.caller(context), self.driver_lease, self.clock())
        return pb.RenewLeaseResponse(lease=self.driver_lease)

    @_rpc
    def Invalidate(self, request: pb.InvalidateRequest, context: grpc.ServicerContext) -> pb.InvalidateResponse:
        caller = self.caller(context)
        if not request.run_uuid:
            raise InvalidSpec("must name a run", field="run_uuid")
        self.store.invalidate(caller, request.run_uuid)
        return pb.InvalidateResponse()

    def _admin(self, context: grpc.ServicerContext) -> None:
        if self.caller(context).kind != "admin":
            raise PermissionDenied("only an admin manages tokens", field="token")

    @_rpc
    def CreateToken(self, request: pb.CreateTokenRequest, context: grpc.ServicerContext) -> pb.CreateTokenResponse:
        self._admin(context)
        if not re.fullmatch(r"[\w.@-]{1,100}", request.name):
            raise InvalidSpec(f"{request.name[:100]!r} is not a token name (letters, digits, . @ - _)", field="name")
        if request.name in {"admin", _login()}:  # the names admins' jobs are owned by
            raise InvalidSpec(f"{request.name!r} is the name of an admin, not of a user", field="name")
        if not 0 <= request.expires_in <= MAX_EXPIRY:
            raise InvalidSpec(f"must be 0 (never) or up to {MAX_EXPIRY:.0f} seconds, got {request.expires_in}",
                              field="expires_in")
        now = self.clock()
        expires_at = now + request.expires_in if request.expires_in else None
        return pb.CreateTokenResponse(token=self.store.create_user_token(request.name, now, expires_at))

    @_rpc
    def ListTokens(self, request: pb.ListTokensRequest, context: grpc.ServicerContext) -> pb.ListTokensResponse:
        self._admin(context)
        return pb.ListTokensResponse(tokens=[pb.TokenInfo(name=t["name"], created_at=t["created_at"],
                                                          expires_at=t["expires_at"] or 0.0)
                                             for t in self.store.user_tokens()])

    @_rpc
    def RevokeToken(self, request: pb.RevokeTokenRequest, context: grpc.ServicerContext) -> pb.RevokeTokenResponse:
        self._admin(context)
        self.store.revoke_user_token(request.name)
        return pb.RevokeTokenResponse()

    @_rpc
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        self.caller(context)
        active = self.store.active_runs()
        charged = charge_all({name: executor.nodes() for name, executor in self.executors.items()}, active)
        nodes = [pb.Node(name=n.name, cpu_millis=n.cpu_millis, memory=n.memory, cpu_used=n.cpu_used,
                         memory_used=n.memory_used, cpu_enforced=n.cpu_enforced)
                 for found in charged.values() for n in found]
        disk = {}
        if self.caller(context).kind == "admin":
            store_file = self.store.url.removeprefix("sqlite:///") if self.store.is_sqlite else ""
            disk = retention.disk_use(Path(self.runs_root).parent, store_file)
        return pb.StatusResponse(version="0.1.0", pid=os.getpid(), store=_redact(self.store.url),
                                 runs=self.store.run_counts(), nodes=nodes, disk=disk)

    @_rpc
    def Pin(self, request: pb.PinRequest, context: grpc.ServicerContext) -> pb.PinResponse:
        uuid, _ = self._scoped(self.caller(context), request.uuid)
        self.store.pin(uuid, request.unpin, self.clock())
        return pb.PinResponse()

    @_rpc
    def Collect(self, request: pb.CollectRequest, context: grpc.ServicerContext) -> pb.CollectResponse:
        if self.caller(context).kind != "admin":
            raise PermissionDenied("only an admin collects what nothing needs", field="token")
        if not 0 <= request.older_than < float("inf"):
            raise InvalidSpec(f"must be 0 or more seconds, got {request.older_than}", field="older_than")
        done = retention.collect(self.store, self.data, self.programs, request.older_than, self.clock(),
                                 request.dry_run)
        return pb.CollectResponse(**dataclasses.asdict(done))


class DataService(pb_grpc.DataServiceServicer):
    """Blobs and manifests, so that a driver anywhere can upload inputs and download outputs.

    Knowing a digest gives nothing: a caller reads data it sent within its scope, or the output
    of a run one of its jobs is attached to (`Store.may_read`), and a blob only through such data.
    A blob it never sent is missing for it, so that it proves it has the bytes by sending them."""

    def __init__(self, jobs: JobService, data: Data) -> None:
        self.jobs = jobs
        self.data = data
        self.activity = jobs.activity
        self.streams = jobs.streams

    @_rpc
    def Missing(self, request: pb.BlobRefs, context: grpc.ServicerContext) -> pb.BlobRefs:
        caller = self.jobs.caller(context)
        absent = set(self.data.missing(list(request.digests), request.size))
        held = self.jobs.store.held(caller, request.digests)
        return pb.BlobRefs(digests=[d for d in request.digests if d in absent or d not in held])

    @_rpc
    def Upload(self, chunks: Iterator[pb.BlobChunk], context: grpc.ServicerContext) -> pb.BlobRef:
        caller = self.jobs.caller(context)
        digest = self.data.receive((c.digest, c.size, c.data) for c in chunks)
        self.jobs.store.hold(caller, [digest])
        return pb.BlobRef(digest=digest)

    @_rpc
    def Download(self, request: pb.BlobRef, context: grpc.ServicerContext) -> Iterator[pb.BlobChunk]:
        caller = self.jobs.caller(context)
        if caller.kind != "admin":
            files = self.jobs.readable(caller, request.manifest, "manifest")["files"].values()
            if not any(e.get("sha256") == request.digest for e in files):
                raise NotFound(f"data {request.manifest} holds no blob {request.digest[:80]}", field="digest")
        try:
            for data in self.data.open_blob(request.digest):
                yield pb.BlobChunk(data=data)
        except CorruptData as e:
            with self.jobs.store.write() as tx:
                self.jobs.store.forget_outputs(tx.conn, e.manifests)
            raise

    @_rpc
    def PutManifest(self, request: pb.Manifest, context: grpc.ServicerContext) -> pb.Manifest:
        caller = self.jobs.caller(context)
        files: dict[str, dict[str, Any]] = {}
        held = self.jobs.store.held(caller, [e.digest for e in request.entries if not e.link])
        for e in request.entries:
            if e.path in files:
                raise InvalidSpec("named twice", field=f"entries[{e.path!r}]")
            if not (e.link or e.digest in held):  # as if absent
                raise InvalidSpec(f"blob {e.digest[:80]!r} was not uploaded", field=f"entries[{e.path!r}]")
            files[e.path] = {"link": e.link} if e.link else {"sha256": e.digest, "size": e.size, "x": e.executable}
        digest = self.data.put_manifest(files, request.file)
        self.jobs.store.hold(caller, [digest])
        return self._manifest(digest, self.data.manifest(digest))

    @_rpc
    def GetManifest(self, request: pb.BlobRef, context: grpc.ServicerContext) -> pb.Manifest:
        caller = self.jobs.caller(context)
        return self._manifest(request.digest, self.jobs.readable(caller, request.digest, "digest"))

    def _manifest(self, digest: str, manifest: dict[str, Any]) -> pb.Manifest:
        return pb.Manifest(digest=digest, file=manifest.get("file", ""), entries=[
            pb.ManifestEntry(path=path, link=e["link"]) if "link" in e else
            pb.ManifestEntry(path=path, digest=e["sha256"], size=e["size"], executable=e["x"])
            for path, e in manifest["files"].items()])


def _event(uuid: str, state: str, reason: str, exit_code: int | None, initial: bool = False, parent: str = ""
           ) -> pb.JobEvent:
    return pb.JobEvent(uuid=uuid, state=state, reason=reason, exit_code=exit_code or 0,
                       has_exit_code=exit_code is not None, initial=initial, spawned_by_job_uuid=parent)


def _login() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid with no passwd entry, as in many containers
        return str(os.getuid())


def job_message(row: dict[str, Any], waiting: Callable[[str], str], with_spec: bool = False) -> pb.Job:
    msg = pb.Job(**{name: row[name] for name in VIEW})
    if msg.state == "queued":
        msg.reason = waiting(msg.run_uuid) or msg.reason
    if with_spec:
        spec = json.loads(row["spec"])
        msg.spec.CopyFrom(pb.JobSpec(
            name=spec["name"], argv=spec["argv"], env=spec["env"], cwd=spec["cwd"], image=spec["image"],
            cpu=spec["cpu_millis"] / 1000, memory=spec["memory"], priority=spec["priority"],
            no_reuse=spec["no_reuse"], executor=spec["executor"], timeout=spec["timeout"],
            cache_version=spec["cache_version"], labels=spec["labels"], driver=spec.get("driver", False),
            program=spec.get("program", ""), when=json.dumps(spec["when"]) if "when" in spec else "",
            retries=spec.get("retries", 0), memory_on_oom=spec.get("memory_on_oom", 1.0),
            inputs={k: f"job:{v['job']}" if "job" in v else f"data:{v['data']}" for k, v in spec.get("inputs", {}).items()},
            mount_cwd=spec.get("mount_cwd", False),
        ))
    return msg


def list_chunks(rows: Sequence[Any], waiting: Callable[[Sequence[str], Sequence[str]], list[str]]
                ) -> Iterator[pb.ListChunk]:
    """`rows` as chunks of at most about `LIST_CHUNK_BYTES` each, however long their texts."""
    start, size = 0, 0
    for i, row in enumerate(rows):
        row_size = 64 + sum(len(v) for v in row if isinstance(v, str))
        if size + row_size > LIST_CHUNK_BYTES and i > start:
            yield list_chunk(rows[start:i], waiting)
            start, size = i, 0
        size += row_size
    if start < len(rows):
        yield list_chunk(rows[start:], waiting)


def list_chunk(rows: Sequence[Any], waiting: Callable[[Sequence[str], Sequence[str]], list[str]]) -> pb.ListChunk:
    chunk = pb.ListChunk()
    columns: dict[str, Sequence[Any]] = dict(zip(LIST_FIELDS, zip(*rows)))
    if columns:
        queued = [i for i, state in enumerate(columns["state"]) if state == "queued"]
        why = dict(zip(queued, waiting([columns["uuid"][i] for i in queued], [columns["run_uuid"][i] for i in queued])))
        columns["reason"] = [why.get(i) or reason for i, reason in enumerate(columns["reason"])]
    for name, column in columns.items():
        getattr(chunk, name).extend(column)
    return chunk


def _start(path: str, offset: int) -> int:
    """Where a log read begins: `offset`, or for a negative one that many bytes before the end."""
    if offset >= 0:
        return offset
    try:
        return max(0, os.path.getsize(path) + offset)
    except FileNotFoundError:
        return 0


def _read_from(path: str, offsets: dict[str, int], stream: str, left: dict[str, int | None]
               ) -> Iterator[tuple[int, bytes]]:
    """What `path` holds from `offsets[stream]` on, as (offset, chunk), at most `left[stream]` bytes."""
    try:
        with open(path, "rb") as f:
            f.seek(offsets[stream])
            while left[stream] != 0 and (data := f.read(min(LOG_CHUNK, left[stream] or LOG_CHUNK))):
                yield offsets[stream], data
                offsets[stream] += len(data)
                if left[stream] is not None:
                    left[stream] -= len(data)
    except FileNotFoundError:
        return


def _redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)
