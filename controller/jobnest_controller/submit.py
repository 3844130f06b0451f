"""Submitting jobs and reusing runs: a batch of specs becomes jobs attached to new or reused runs.

`Store` takes `Submits` as a part. The server calls `submit` for every Submit; the reconciler
calls `release` when held jobs may run. Concurrent submits are committed together (group commit):
whoever takes the write lock first stores every submission waiting for it in one transaction, and
each caller returns once its own jobs are durable.
"""

import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from jobnest.errors import InvalidSpec, JobnestError

from . import conditions
from .auth import Caller, hash_token
from .data import CorruptData
from .events import JobEvent
from .models import jobs, requests, runs
from .signature import signature, signature_parts
from .specs import levels, rename_refs
from .states import REUSABLE, Kind, State
from .views import JOB_FROM, RUN_STATE, STATE, ByKeys, Fast, chunks, insert_new, one_of, view

if TYPE_CHECKING:
    from .store import Store, Tx

log = logging.getLogger(__name__)
DRIVER = "driver"  # executor name of a driver program's run: it runs outside the controller
PROCESS_EXECUTORS = {"local", DRIVER}  # runs that are processes of a user, not containers

# What a job attached to an existing run takes from it when it is submitted.
# Options outside the signature that change how a run ends: a run in flight is shared only by
# jobs that agree on them (one that succeeded serves any job).
OUTCOME = {"timeout": 0.0, "retries": 0, "memory": 0, "memory_on_oom": 1.0}  # with their defaults
RUN_FACTS = [runs.c.uuid, runs.c.signature, runs.c.state, runs.c.origin_job_uuid, runs.c.seq, runs.c.exit_code,
             runs.c.started_at, runs.c.finished_at, runs.c.node, runs.c.executor, runs.c.cpu_enforced,
             runs.c.workdir, runs.c.reason, runs.c.output, runs.c.owner, *(runs.c[name] for name in OUTCOME)]
# The submit path's queries, built once: building a statement costs more than running it.
REUSABLE_RUNS = ByKeys(runs.c.signature, sa.select(*RUN_FACTS).where(
    one_of(RUN_STATE, [s.value for s in REUSABLE]), one_of(runs.c.desired, ["run", "hold"])).where)
CLAIM_REQUEST = {dialect: Fast(insert.returning(requests.c.request_id))
                 for dialect, insert in insert_new(requests).items()}
FACTS = ByKeys(jobs.c.uuid, sa.select(jobs.c.uuid, STATE, runs.c.uuid, runs.c.executor, runs.c.output)
               .select_from(JOB_FROM).where)
HELD = ByKeys(runs.c.uuid, sa.select(runs.c.uuid, runs.c.spec, runs.c.owner).where(
    runs.c.desired == "hold", RUN_STATE == State.QUEUED.value).where)
RELEASE = Fast(sa.update(runs).where(runs.c.uuid == sa.bindparam("run")).values(
    desired="run", signature=sa.bindparam("b_signature"), sig_parts=sa.bindparam("b_sig_parts"),
    spec=sa.bindparam("b_spec")))
LAST_RUN = sa.select(sa.func.coalesce(sa.func.max(runs.c.seq), 0))
# What the reconciler's index keeps of a queued run, with its owner: told whole of a new run,
# read by `Store.queued_runs` of any other.
INDEXED = ("uuid", "desired", "executor", "cpu_millis", "memory", "priority", "seq", "origin_job_uuid", "reason",
           "created_at")
REQUEST_JOBS = Fast(sa.select(requests.c.job_uuids, requests.c.body).where(
    requests.c.caller == sa.bindparam("caller"), requests.c.request_id == sa.bindparam("request_id")))


def random_uuids(n: int) -> list[str]:
    """n random uuids (32 hex digits), from one read of the system's randomness."""
    noise = os.urandom(16 * n).hex()
    return [noise[i:i + 32] for i in range(0, 32 * n, 32)]


class PathKeys:
    """Keys for the segments of job paths, which sort in the order they were made: 12 hex digits
    of milliseconds, 4 of a counter within the millisecond, 16 random. So a subtree listed in
    `path` order, which its index gives for free, is in tree order with siblings in submit order.
    (Uuids stay random: their first digits are what people type and see.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = self._count = 0

    def take(self, n: int, now: float) -> Iterator[str]:
        noise = os.urandom(8 * n).hex()
        with self._lock:
            ms, count = max(int(now * 1000), self._ms), self._count
            if ms != self._ms:
                count = 0
            out = []
            for i in range(n):
                if count > 0xFFFF:
                    ms, count = ms + 1, 0
                out.append(f"{ms:012x}{count:04x}{noise[16 * i:16 * i + 16]}")
                count += 1
            self._ms, self._count = ms, count
        return iter(out)


@dataclass(slots=True)
class Submission:
    """One Submit call waiting for the group commit that stores it."""

    caller: Caller
    request_id: str
    specs: list[dict[str, Any]]
    now: float
    body: str  # a digest of what was asked, to tell a retry from another request with the same id
    outcome: tuple[list[dict[str, Any]], str | None] | JobnestError | None = None


class Fact(NamedTuple):
    state: str  # the job's
    run_uuid: str
    executor: str
    output: str


class Submits:
    def submit(self: "Store", caller: Caller, request_id: str, specs: list[dict[str, Any]], now: float,
               body: str = "") -> tuple[list[dict[str, Any]], str | None]:
        """Store a batch of validated specs; returns the jobs (as `VIEW`) and, for a driver, its token.

        Each job reuses a succeeded run with its signature, else a queued or running one, unless
        it asks not to. A request id seen before returns the first request's jobs, if `body` (a
        digest of the request; by default, of `specs`) is the same; else it is refused.
        """
        if request_id and not body:  # only a request id's retries are compared
            body = hashlib.sha256(json.dumps(specs, sort_keys=True).encode()).hexdigest()
        mine = Submission(caller, request_id, specs, now, body)
        with self._submissions_lock:
            self._submissions.append(mine)
        with self._write_lock:
            self._commit_waiting()  # ours, unless another writer stored it already
        if isinstance(mine.outcome, JobnestError):
            raise mine.outcome
        assert mine.outcome is not None
        return mine.outcome

    def _commit_waiting(self: "Store") -> None:
        """Store every submission waiting, in one transaction; the caller holds the write lock.
        A submission refused is refused alone: each is checked before anything of it is written."""
        with self._submissions_lock:
            group, self._submissions = self._submissions, []
        if not group:
            return
        try:
            with self._transaction() as tx:
                outcomes: list[Any] = []
                for s in group:
                    try:
                        outcomes.append(self._submit(tx, s))
                    except InvalidSpec as e:
                        outcomes.append(e)
        except Exception as e:  # the commit failed: nothing of the group is stored
            if not isinstance(e, JobnestError):
                log.exception("submit failed")
                e = JobnestError(f"internal error storing the jobs: {e}")
            outcomes = [e] * len(group)
        for s, outcome in zip(group, outcomes):
            s.outcome = outcome

    def _submit(self: "Store", tx: "Tx", s: Submission) -> tuple[list[dict[str, Any]], str | None]:
        specs, caller, now = s.specs, s.caller, s.now
        # Checks first, writes after: a refusal leaves nothing of this submission behind.
        n = len(specs)
        ids = random_uuids(2 * n)
        job_uuids, run_uuids = ids[:n], iter(ids[n:])
        batch_order = levels(specs)  # before "@N" references become the uuids they name; refuses cycles
        named: set[str] = set()
        for spec in specs:
            if "when" in spec:
                rename_refs(spec, lambda ref: job_uuids[int(ref[1:])] if ref.startswith("@") else ref)
                named |= conditions.jobs_of(spec["when"])
        facts = self._facts(tx.conn, named - set(job_uuids))
        for i, spec in enumerate(specs):
            for name, ref in spec.get("inputs", {}).items():
                if ref.get("job") in facts and facts[ref["job"]].executor == DRIVER:
                    raise InvalidSpec(f"job {ref['job']} is a driver program, which makes no output",
                                      field=f"jobs[{i}].inputs[{name!r}]")
        path_keys = list(self.path_keys.take(n, now))
        parent_path = caller.path if caller.kind == "job" else "/"
        job_rows: list[dict[str, Any]] = [{}] * n
        views: list[dict[str, Any]] = [{}] * n
        run_rows, driver_token = [], None
        reusable: dict[str, list[dict[str, Any]]] = {}  # signature -> the runs with it, best first
        for level in batch_order:
            for i in level:
                _sign(specs[i], facts)
            parts = {i: signature_parts(specs[i]) for i in level}
            sigs = {i: signature(parts[i]) for i in level}
            wanted = {sigs[i] for i in level if _may_reuse(specs[i])} - set(reusable)
            reusable.update(self._reusable(tx.conn, wanted))
            for i in level:
                spec, sig, job_uuid = specs[i], sigs[i], job_uuids[i]
                spec_json = json.dumps(spec)
                run = _shareable(reusable.get(sig, []), spec, caller.name, lambda r: self._intact(tx.conn, r)) \
                    if _may_reuse(spec) else None
                if run is None:
                    # A run gets its token when it starts; a driver runs from the moment it is submitted.
                    token = secrets.token_urlsafe(24) if spec.get("driver") else None
                    run = _new_run(next(run_uuids), spec, spec_json, parts[i], sig, job_uuid, caller.name, token, now)
                    run_rows.append(run)
                    if _may_reuse(spec):
                        reusable.setdefault(sig, []).insert(0, run)  # identical specs in one batch share it
                    driver_token = token or driver_token
                job_rows[i] = {
                    "uuid": job_uuid, "name": spec["name"], "owner": caller.name,
                    "spawned_by_job_uuid": caller.job_uuid, "path": f"{parent_path}{path_keys[i]}/",
                    "run_uuid": run["uuid"], "reused": run["origin_job_uuid"] != job_uuid, "end_state": "",
                    "reason": "", "finished_at": None, "desired": "run", "spec": spec_json, "created_at": now,
                    "cpu_millis": spec["cpu_millis"], "memory": spec["memory"],
                }
                views[i] = view(job_rows[i], run)
                if len(batch_order) > 1:  # jobs of later levels name it
                    facts[job_uuid] = Fact(run["state"], run["uuid"], run["executor"], run["output"])
        if s.request_id:  # one statement when the id is new, as it nearly always is
            claim = {"caller": caller.key, "request_id": s.request_id, "job_uuids": json.dumps(job_uuids),
                     "body": s.body}
            if not CLAIM_REQUEST[self.engine.dialect.name].run(tx.conn, claim):
                [(known, body)] = REQUEST_JOBS.run(tx.conn, claim)
                if body != s.body:
                    raise InvalidSpec(f"{s.request_id[:80]!r} was the id of another request, with other jobs: "
                                      "a retry sends the same jobs, a new request a new id", field="request_id")
                return self.get_jobs(json.loads(known), tx.conn), None
        if run_rows:
            # Numbered here rather than by the database, so the reconciler is told of the new
            # runs whole and reads none of them back (one writer at a time: see `write`).
            if self._last_seq is None:
                self._last_seq = tx.conn.execute(LAST_RUN).scalar_one()
            for seq, run in enumerate(run_rows, start=self._last_seq + 1):
                run["seq"] = seq
            self._last_seq += len(run_rows)  # a transaction that fails after this leaves a gap: harmless
            self._insert_many(tx.conn, runs, run_rows)
            spec_of = dict(zip(job_uuids, specs))
            tx.new_runs += [{**{k: run[k] for k in INDEXED}, "owner": caller.name,
                             **({"when": spec_of[run["origin_job_uuid"]]["when"]} if run["desired"] == "hold" else {})}
                            for run in run_rows if run["state"] == State.QUEUED.value]  # not drivers
        self._insert_many(tx.conn, jobs, job_rows)
        tx.events.extend(JobEvent(j["uuid"], j["path"], v["state"], "", None, j["spawned_by_job_uuid"] or "")
                         for j, v in zip(job_rows, views))
        return views, driver_token

    def _facts(self: "Store", conn: Connection, uuids: set[str]) -> dict[str, Fact]:
        """What a condition or an input needs to know of the jobs it names."""
        found = {}
        for chunk in chunks(list(uuids)):
            found.update((uuid, Fact(*rest)) for uuid, *rest in FACTS.execute(conn, chunk))
        return found

    def _reusable(self: "Store", conn: Connection, sigs: set[str]) -> dict[str, list[dict[str, Any]]]:
        """The runs a job with each signature may reuse (as `RUN_FACTS`), best first: succeeded,
        then in flight, newest first."""
        rank = {s.value: i for i, s in enumerate(REUSABLE)}
        found: dict[str, list[dict[str, Any]]] = {}
        for chunk in chunks(list(sigs)):
            for row in REUSABLE_RUNS.execute(conn, chunk).dicts():
                found.setdefault(row["signature"], []).append(row)
        for rows in found.values():
            rows.sort(key=lambda row: (rank[row["state"]], -row["seq"]))
        return found

    def find_reusable(self: "Store", sigs: list[str]) -> dict[str, str]:
        """Signature -> run uuid for the runs a new job with that signature would reuse."""
        with self.read() as conn:
            return {sig: rows[0]["uuid"] for sig, rows in self._reusable(conn, set(sigs)).items()}

    def _intact(self: "Store", conn: Connection, run: dict[str, Any]) -> bool:
        """Whether a run's output still has its bytes; one found corrupt is reused no more."""
        if not run["output"] or self.data is None:
            return True
        try:
            self.data.intact(run["output"])
        except CorruptData as e:
            self.forget_outputs(conn, e.manifests)
            return False
        return True

    def forget_outputs(self: "Store", conn: Connection, manifests: set[str]) -> None:
        """Runs whose output is one of `manifests` (found corrupt) are reused no more."""
        for chunk in chunks(sorted(manifests)):
            conn.execute(sa.update(runs).where(runs.c.output.in_(chunk), runs.c.state == State.SUCCEEDED.value)
                         .values(desired="invalid"))

    def release(self: "Store", tx: "Tx", run_uuids: list[str], now: float) -> list[str]:
        """Held runs whose conditions hold may be scheduled now, signed over what they read;
        returns those that wait in the queue now.

        Their inputs' content is known now, and a condition that held changes no result: a run
        with that final signature, if there is one, is reused instead (this one ends unneeded,
        and its jobs are attached to the other)."""
        ready = []
        for chunk in chunks(run_uuids):
            for run_uuid, spec_json, owner in HELD.execute(tx.conn, chunk):
                spec = json.loads(spec_json)
                spec.pop("when_runs", None)
                producers = {ref["job"] for ref in spec.get("inputs", {}).values() if "job" in ref}
                _sign_inputs(spec, self._facts(tx.conn, producers))
                parts = signature_parts(spec)
                sig = signature(parts)
                found = (_shareable(self._reusable(tx.conn, {sig}).get(sig, []), spec, owner,
                                    lambda r: self._intact(tx.conn, r)) if _may_reuse(spec) else None)
                RELEASE.run(tx.conn, {"run": run_uuid, "b_signature": sig, "b_sig_parts": json.dumps(parts),
                                      "b_spec": json.dumps(spec)})
                tx.runs.add(run_uuid)
                if found is None:
                    ready.append(run_uuid)
                    continue
                moved = tx.conn.execute(
                    sa.update(jobs).where(jobs.c.run_uuid == run_uuid, jobs.c.end_state == "")
                    .values(run_uuid=found["uuid"], reused=True).returning(jobs.c.uuid, jobs.c.path)
                ).all()
                tx.events.extend(JobEvent(u, p, found["state"], found["reason"], found["exit_code"]) for u, p in moved)
                self.transition(tx, Kind.RUN, run_uuid, State.QUEUED, State.CANCELLED,
                                f"not needed: its jobs reuse run {found['uuid']}", finished_at=now)
        return ready


def _shareable(candidates: list[dict[str, Any]], spec: dict[str, Any], owner: str,
               intact: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The first run of `candidates` a job of `spec`, submitted for `owner`, may take as its own
    (and whose output is `intact`: its bytes were checked).

    Within an owner: one that succeeded, or one in flight that would end as the job's own run
    would (see `OUTCOME`). Across owners: only one that succeeded in a container (a local
    process could read or change anything of the controller's user), with no host folder
    mounted. Its inputs are the job's own (they are in the signature), which the job's owner
    could name, so reuse shows nobody anything they could not read."""
    for run in candidates:
        succeeded = run["state"] == State.SUCCEEDED.value
        if run["owner"] != owner and not (succeeded and run["executor"] not in PROCESS_EXECUTORS
                                          and not spec.get("mount_cwd")):
            continue
        if intact(run) if succeeded else all(run[k] == spec.get(k, v) for k, v in OUTCOME.items()):
            return run
    return None


def _may_reuse(spec: dict[str, Any]) -> bool:
    return not (spec.get("no_reuse") or spec.get("driver"))


def _sign_inputs(spec: dict[str, Any], facts: dict[str, Fact]) -> bool:
    """Set the inputs' content digests that the signature hashes; True if all are known. An
    output not made yet is stood in for by the run that will make it."""
    data = {}
    for name, ref in spec.get("inputs", {}).items():
        fact = facts[ref["job"]] if "job" in ref else None
        data[name] = ref["data"] if fact is None else fact.output or f"run:{fact.run_uuid}"
    if data:
        spec["input_data"] = data
    return not any(d.startswith("run:") for d in data.values())


def _sign(spec: dict[str, Any], facts: dict[str, Fact]) -> None:
    """A job with a condition runs at once, signed like any other, when its condition holds
    already and its inputs are known; else it is held, signed over the runs it waits on."""
    ready = _sign_inputs(spec, facts)
    if "when" not in spec:
        return
    holds, _ = conditions.evaluate(spec["when"], {uuid: f.state for uuid, f in facts.items()})
    if not (ready and holds):
        spec["when_runs"] = conditions.rename(spec["when"], lambda job: facts[job].run_uuid, key="run")


def _new_run(run_uuid: str, spec: dict[str, Any], spec_json: str, parts: dict[str, str], sig: str, job_uuid: str,
             owner: str, token: str | None, now: float) -> dict[str, Any]:
    driver = bool(spec.get("driver"))
    return {
        "uuid": run_uuid, "origin_job_uuid": job_uuid, "owner": owner, "signature": sig, "sig_parts": json.dumps(parts),
        "name": spec["name"], "state": (State.RUNNING if driver else State.QUEUED).value, "reason": "",
        "desired": "hold" if "when_runs" in spec else "run", "executor": DRIVER if driver else spec["executor"],
        "cpu_millis": spec["cpu_millis"], "priority": spec.get("priority", 0), "attempt": 1, "spec": spec_json,
        **{name: spec.get(name, default) for name, default in OUTCOME.items()},
        "token_hash": hash_token(token) if token else "", "node": spec.get("driver_host", "") if driver else "",
        "pid": spec.get("driver_pid", 0) if driver else 0, "handle": "", "workdir": "",
        "cpu_enforced": False, "exit_code": None, "output": "", "created_at": now,
        "started_at": now if driver else None, "finished_at": None,
        "lease_until": now + spec["lease"] if driver and spec.get("lease") else None,  # the server sets it
    }
