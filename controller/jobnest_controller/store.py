"""The store: the single source of truth for jobs, runs and tokens.

The gRPC server calls it for every request and the reconciler for every state change. Hot paths
(submit, reuse lookup, listing) are SQLAlchemy Core over the SQLModel tables. Every state change
goes through `transition()`, a compare-and-set against the table in `states.py`. No SQLAlchemy
error leaves this module: they become `jobnest.errors` types.
"""

import contextlib
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from jobnest.errors import Conflict, InvalidSpec, JobnestError, NotFound, PermissionDenied, Unauthenticated

from . import conditions
from .events import Bus, JobEvent
from .models import Job, Request, Run, UserToken
from .signature import signature, signature_parts
from .specs import levels, rename_refs
from .states import ALLOWED, LIVE, REUSABLE, State

jobs: sa.Table = Job.__table__  # type: ignore[attr-defined]
runs: sa.Table = Run.__table__  # type: ignore[attr-defined]
user_tokens: sa.Table = UserToken.__table__  # type: ignore[attr-defined]
requests: sa.Table = Request.__table__  # type: ignore[attr-defined]

LIVE_VALUES = [s.value for s in LIVE]
DRIVER = "driver"  # executor name of a driver program's run: it runs outside the controller


class Kind(str, Enum):
    JOB = "job"
    RUN = "run"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call: an admin, a person or driver with a user token, or a job with its token."""

    kind: str  # "admin", "user" or "job"
    name: str
    job_uuid: str | None = None
    path: str = ""  # a job caller's scope: its own subtree

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.job_uuid or self.name}"

    def check_scope(self, job_uuid: str, path: str) -> None:
        if self.kind == "job" and not path.startswith(self.path):
            raise PermissionDenied(f"job {job_uuid} is outside the subtree of job {self.job_uuid}", field="uuid")


@dataclass(slots=True)
class Tx:
    conn: Connection
    events: list[JobEvent] = field(default_factory=list)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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


# A job as clients see it: its own columns and its run's, named as the fields of the Job message
# (and of the columns of a ListChunk). A job shares its run's exit code and reason unless it ended
# apart from its run.
_in_step = jobs.c.state == runs.c.state
VIEW: dict[str, sa.ColumnElement[Any]] = {
    "uuid": jobs.c.uuid, "name": jobs.c.name, "owner": jobs.c.owner,
    "spawned_by_job_uuid": sa.func.coalesce(jobs.c.spawned_by_job_uuid, ""), "state": jobs.c.state,
    "reason": sa.case((jobs.c.reason != "", jobs.c.reason), (_in_step, runs.c.reason), else_=""),
    "run_uuid": jobs.c.run_uuid, "reused": jobs.c.reused, "run_origin_job_uuid": runs.c.origin_job_uuid,
    "exit_code": sa.case((_in_step, sa.func.coalesce(runs.c.exit_code, 0)), else_=0),
    "has_exit_code": sa.type_coerce(sa.and_(_in_step, runs.c.exit_code.is_not(None)), sa.Boolean),
    "cpu_millis": jobs.c.cpu_millis, "memory": jobs.c.memory, "created_at": jobs.c.created_at,
    "started_at": sa.func.coalesce(runs.c.started_at, 0.0), "finished_at": sa.func.coalesce(runs.c.finished_at, 0.0),
    "node": runs.c.node, "executor": runs.c.executor, "cpu_enforced": runs.c.cpu_enforced,
    "signature": runs.c.signature,
    "output": runs.c.output, "run_state": runs.c.state,
    "output_dir": sa.case((runs.c.workdir != "", runs.c.workdir + "/out"), else_=""),
}
VIEW_COLUMNS = [column.label(name) for name, column in VIEW.items()]
# Listings leave out what only `Get` needs: 64 bytes a job add up over 100k jobs.
LIST_FIELDS = [name for name in VIEW if name != "signature"]
LIST_COLUMNS = [VIEW[name].label(name) for name in LIST_FIELDS]
JOB_FROM = jobs.join(runs, runs.c.uuid == jobs.c.run_uuid)
# What a job attached to an existing run takes from it when it is submitted.
RUN_FACTS = [runs.c.uuid, runs.c.signature, runs.c.state, runs.c.origin_job_uuid, runs.c.seq, runs.c.exit_code,
             runs.c.started_at, runs.c.finished_at, runs.c.node, runs.c.executor, runs.c.cpu_enforced,
             runs.c.workdir, runs.c.reason, runs.c.output]
# The submit path's queries, built once: building a statement costs more than running it.
REUSABLE_RUNS = sa.select(*RUN_FACTS).where(
    runs.c.signature.in_(sa.bindparam("sigs", expanding=True)),
    runs.c.state.in_([s.value for s in REUSABLE]), runs.c.desired.in_(["run", "hold"]))
REQUEST_JOBS = sa.select(requests.c.job_uuids).where(
    requests.c.caller == sa.bindparam("caller"), requests.c.request_id == sa.bindparam("request_id"))


class Store:
    def __init__(self, url: str, bus: Bus | None = None) -> None:
        self.url = url
        self.bus = bus or Bus()
        self.is_sqlite = url.startswith("sqlite")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        if self.is_sqlite:
            self.engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_size=10, max_overflow=20)
        # Writers queue here, one at a time. SQLite allows no more anyway; on PostgreSQL it keeps
        # a submit that attaches to a run from racing the transition that ends that run, in this
        # one controller process.
        self._write_lock = threading.Lock()
        self.path_keys = PathKeys()
        dialect_insert = sqlite_insert if self.is_sqlite else postgresql_insert
        self._claim_request = dialect_insert(requests).on_conflict_do_nothing().returning(requests.c.request_id)
        try:
            SQLModel.metadata.create_all(self.engine)
            inspector = sa.inspect(self.engine)
            for table in (jobs, runs, requests, user_tokens):
                missing = {c.name for c in table.columns} - {c["name"] for c in inspector.get_columns(table.name)}
                if missing:
                    raise JobnestError(f"the store at {self.url} is older than this controller: table "
                                       f"{table.name} lacks {', '.join(sorted(missing))}; move it aside to start afresh")
        except sa.exc.SQLAlchemyError as e:
            raise JobnestError(f"cannot open the store at {self.url}: {e}") from e

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def write(self) -> Iterator[Tx]:
        """One write transaction; its state changes are published once it commits."""
        with self._write_lock, _db_errors(), self.engine.begin() as conn:
            tx = Tx(conn)
            yield tx
        self.bus.publish(tx.events)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with _db_errors(), self.engine.connect() as conn:
            yield conn

    # -- state ---------------------------------------------------------------------------------

    def transition(self, tx: Tx, kind: Kind, uuid: str, expected: State, new: State, reason: str,
                   **values: Any) -> bool:
        """Move one job or run from `expected` to `new`; False if it was no longer `expected`.

        A run's jobs that were in step with it move with it.
        """
        if new not in ALLOWED[expected]:
            raise ValueError(f"{kind.value} {uuid}: {expected.value} -> {new.value} is not a transition")
        table = runs if kind is Kind.RUN else jobs
        done = tx.conn.execute(
            sa.update(table).where(table.c.uuid == uuid, table.c.state == expected.value)
            .values(state=new.value, reason=reason, **values)
        ).rowcount == 1
        if not done:
            return False
        if kind is Kind.RUN:
            moved = tx.conn.execute(
                sa.update(jobs).where(jobs.c.run_uuid == uuid, jobs.c.state == expected.value)
                .values(state=new.value, reason=reason).returning(jobs.c.uuid, jobs.c.path)
            ).all()
            exit_code = values.get("exit_code")
            tx.events.extend(JobEvent(u, p, new.value, reason, exit_code) for u, p in moved)
        else:
            path = tx.conn.execute(sa.select(jobs.c.path).where(jobs.c.uuid == uuid)).scalar_one()
            tx.events.append(JobEvent(uuid, path, new.value, reason, None))
        return True

    # -- submit --------------------------------------------------------------------------------

    def submit(self, caller: Caller, request_id: str, specs: list[dict[str, Any]], now: float
               ) -> tuple[list[dict[str, Any]], str | None]:
        """Store a batch of validated specs; returns the jobs (as `VIEW`) and, for a driver, its token.

        Each job reuses a succeeded run with its signature, else a queued or running one, unless
        it asks not to. A request id seen before returns the first request's jobs.
        """
        with self.write() as tx:
            n = len(specs)
            ids = random_uuids(2 * n)
            job_uuids, run_uuids = ids[:n], iter(ids[n:])
            path_keys = list(self.path_keys.take(n, now))
            if request_id:  # claim the id first: one statement when it is new, as it nearly always is
                claim = {"caller": caller.key, "request_id": request_id, "job_uuids": json.dumps(job_uuids)}
                if tx.conn.execute(self._claim_request, claim).first() is None:
                    known = tx.conn.execute(REQUEST_JOBS, claim).scalar_one()
                    return self.get_jobs(json.loads(known)), None
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
            parent_path = caller.path if caller.kind == "job" else "/"
            job_rows: list[dict[str, Any]] = [{}] * n
            views: list[dict[str, Any]] = [{}] * n
            run_rows, driver_token = [], None
            reusable: dict[str, dict[str, Any]] = {}
            for level in batch_order:
                for i in level:
                    _sign(specs[i], facts)
                parts = {i: signature_parts(specs[i]) for i in level}
                sigs = {i: signature(parts[i]) for i in level}
                wanted = {sigs[i] for i in level if _may_reuse(specs[i])} - set(reusable)
                reusable.update((sig, dict(row._mapping)) for sig, row in self._reusable(tx.conn, wanted).items())
                for i in level:
                    spec, sig, job_uuid = specs[i], sigs[i], job_uuids[i]
                    spec_json = json.dumps(spec)
                    run = reusable.get(sig) if _may_reuse(spec) else None
                    if run is None:
                        # A run gets its token when it starts; a driver runs from the moment it is submitted.
                        token = secrets.token_urlsafe(24) if spec.get("driver") else None
                        run = _new_run(next(run_uuids), spec, spec_json, parts[i], sig, job_uuid, token, now)
                        run_rows.append(run)
                        if _may_reuse(spec):
                            reusable[sig] = run  # identical specs in one batch share the run
                        driver_token = token or driver_token
                    job_rows[i] = {
                        "uuid": job_uuid, "name": spec["name"], "owner": caller.name,
                        "spawned_by_job_uuid": caller.job_uuid, "path": f"{parent_path}{path_keys[i]}/",
                        "run_uuid": run["uuid"], "reused": run["origin_job_uuid"] != job_uuid, "state": run["state"],
                        "reason": "", "desired": "run", "spec": spec_json, "created_at": now,
                        "cpu_millis": spec["cpu_millis"], "memory": spec["memory"],
                    }
                    views[i] = _view(job_rows[i], run)
                    if len(batch_order) > 1:  # jobs of later levels name it
                        facts[job_uuid] = Fact(run["state"], run["uuid"], run["executor"], run["output"])
            if run_rows:
                self._insert_many(tx.conn, runs, run_rows)
            self._insert_many(tx.conn, jobs, job_rows)
            tx.events.extend(JobEvent(j["uuid"], j["path"], j["state"], "", None) for j in job_rows)
        return views, driver_token

    def _facts(self, conn: Connection, uuids: set[str]) -> dict[str, "Fact"]:
        """What a condition or an input needs to know of the jobs it names."""
        if not uuids:
            return {}
        rows = conn.execute(sa.select(jobs.c.uuid, jobs.c.state, runs.c.uuid, runs.c.executor, runs.c.output)
                            .select_from(JOB_FROM).where(jobs.c.uuid.in_(uuids))).all()
        return {uuid: Fact(*rest) for uuid, *rest in rows}

    def _insert_many(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        """A plain DBAPI executemany: SQLAlchemy's per-row parameter handling costs more than the insert."""
        names = list(rows[0])
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join([mark] * len(names))})"
        conn.exec_driver_sql(sql, [tuple(row[n] for n in names) for row in rows])

    def _reusable(self, conn: Connection, sigs: set[str]) -> dict[str, sa.Row[Any]]:
        """The best run to reuse for each signature: succeeded first, then in flight, newest."""
        rank = {s.value: i for i, s in enumerate(REUSABLE)}
        best: dict[str, sa.Row[Any]] = {}
        sig_list = list(sigs)
        for i in range(0, len(sig_list), 5000):
            rows = conn.execute(REUSABLE_RUNS, {"sigs": sig_list[i:i + 5000]}).all()
            for row in rows:
                old = best.get(row.signature)
                if old is None or (rank[row.state], -row.seq) < (rank[old.state], -old.seq):
                    best[row.signature] = row
        return best

    def find_reusable(self, sigs: list[str]) -> dict[str, str]:
        """Signature -> run uuid for the runs a new job with that signature would reuse."""
        with self.read() as conn:
            return {sig: row.uuid for sig, row in self._reusable(conn, set(sigs)).items()}

    # -- reading -------------------------------------------------------------------------------

    def get_job(self, uuid: str) -> dict[str, Any]:
        """A job as `VIEW`, with its spec and path."""
        with self.read() as conn:
            row = conn.execute(
                sa.select(*VIEW_COLUMNS, jobs.c.spec, jobs.c.path).select_from(JOB_FROM).where(jobs.c.uuid == uuid)
            ).mappings().first()
        if row is None:
            raise NotFound(f"no job {uuid}", field="uuid")
        return dict(row)

    def get_jobs(self, uuids: list[str]) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(sa.select(*VIEW_COLUMNS).select_from(JOB_FROM).where(jobs.c.uuid.in_(uuids)))
            by_uuid = {r["uuid"]: dict(r) for r in rows.mappings()}
        return [by_uuid[u] for u in uuids]

    def list_jobs(self, *, subtree_path: str | None = None, parent: str | None = None,
                  states: list[str] | None = None, roots: bool = False, limit: int = 0,
                  chunk: int = 5000) -> Iterator[Sequence[sa.Row[Any]]]:
        """Jobs as `LIST_FIELDS` rows (tuples), in chunks, by subtree, parent and state.

        A subtree comes in tree order (each job before its children, siblings in submit order),
        straight off the path index; anything else in submit order.
        """
        query = sa.select(*LIST_COLUMNS).select_from(JOB_FROM)
        if subtree_path:
            query = query.where(jobs.c.path.like(subtree_path + "%")).order_by(jobs.c.path)
        else:
            query = query.order_by(jobs.c.seq)
        if parent:
            query = query.where(jobs.c.spawned_by_job_uuid == parent)
        if roots:
            query = query.where(jobs.c.spawned_by_job_uuid.is_(None))
        if states:
            query = query.where(jobs.c.state.in_(states))
        if limit:
            query = query.limit(limit)
        with self.read() as conn:
            yield from conn.execution_options(yield_per=chunk).execute(query).partitions(chunk)

    def resolve(self, ref: str) -> str:
        """The full uuid of the job that `ref` (a uuid or a unique prefix of 4+ characters) names."""
        if len(ref) == 32:
            return ref
        if len(ref) < 4 or not all(c in "0123456789abcdef" for c in ref):
            raise InvalidSpec(f"{ref!r} is not a job uuid or a prefix of one (4+ hex digits)", field="uuid")
        with self.read() as conn:
            found = conn.execute(sa.select(jobs.c.uuid).where(jobs.c.uuid.like(ref + "%")).limit(2)).scalars().all()
        if not found:
            raise NotFound(f"no job {ref}", field="uuid")
        if len(found) > 1:
            raise InvalidSpec(f"{ref!r} names more than one job; give more of the uuid", field="uuid")
        return found[0]

    def job_path(self, uuid: str) -> str:
        with self.read() as conn:
            path = conn.execute(sa.select(jobs.c.path).where(jobs.c.uuid == uuid)).scalar()
        if path is None:
            raise NotFound(f"no job {uuid}", field="uuid")
        return path

    def run_of(self, job_uuid: str) -> dict[str, Any]:
        with self.read() as conn:
            row = conn.execute(
                sa.select(runs).select_from(JOB_FROM).where(jobs.c.uuid == job_uuid)
            ).mappings().first()
        if row is None:
            raise NotFound(f"no job {job_uuid}", field="uuid")
        return dict(row)

    def run_counts(self) -> dict[str, int]:
        with self.read() as conn:
            return dict(conn.execute(sa.select(runs.c.state, sa.func.count()).group_by(runs.c.state)).all())

    # -- tokens --------------------------------------------------------------------------------

    def authenticate(self, token: str) -> Caller:
        digest = hash_token(token)
        with self.read() as conn:
            row = conn.execute(
                sa.select(runs.c.state, runs.c.desired, jobs.c.uuid, jobs.c.path, jobs.c.owner)
                .select_from(runs.join(jobs, jobs.c.uuid == runs.c.origin_job_uuid))
                .where(runs.c.token_hash == digest)
            ).first()
            if row is not None:
                state, desired, job_uuid, path, owner = row
                if state != State.RUNNING.value or desired != "run":
                    raise Unauthenticated("token expired: its job's run has ended", field="token")
                return Caller("job", owner, job_uuid, path)
            name = conn.execute(sa.select(user_tokens.c.name).where(user_tokens.c.token_hash == digest)).scalar()
        if name is None:
            raise Unauthenticated("token not recognised", field="token")
        return Caller("user", name)

    def create_user_token(self, name: str, now: float) -> str:
        token = "jn_" + secrets.token_urlsafe(24)
        with self.write() as tx:
            tx.conn.execute(sa.insert(user_tokens).values(name=name, token_hash=hash_token(token), created_at=now))
        return token

    # -- cancel and finish ---------------------------------------------------------------------

    def cancel(self, root_uuid: str, reason: str, now: float) -> list[str]:
        """Cancel a job and its whole live subtree; a run stops only when no live job wants it."""
        with self.write() as tx:
            path = tx.conn.execute(sa.select(jobs.c.path).where(jobs.c.uuid == root_uuid)).scalar()
            if path is None:
                raise NotFound(f"no job {root_uuid}", field="uuid")
            doomed = tx.conn.execute(
                sa.select(jobs.c.uuid, jobs.c.run_uuid, jobs.c.state)
                .where(jobs.c.path.like(path + "%"), jobs.c.state.in_(LIVE_VALUES))
            ).all()
            if not doomed:
                return []
            doomed_uuids = [u for u, _, _ in doomed]
            tx.conn.execute(sa.update(jobs).where(jobs.c.uuid.in_(doomed_uuids)).values(desired="cancel"))
            run_uuids = {r for _, r, _ in doomed}
            wanted = set(tx.conn.execute(
                sa.select(jobs.c.run_uuid).where(jobs.c.run_uuid.in_(run_uuids), jobs.c.desired == "run",
                                                 jobs.c.state.in_(LIVE_VALUES))
            ).scalars())
            root_run = next(r for u, r, _ in doomed if u == root_uuid) if root_uuid in doomed_uuids else None
            why = lambda run_uuid: reason if run_uuid == root_run else f"{reason} (with job {root_uuid})"  # noqa: E731
            for job_uuid, run_uuid, state in doomed:
                if run_uuid in wanted:  # another job still wants the run: only this job ends
                    self.transition(tx, Kind.JOB, job_uuid, State(state), State.CANCELLED, why(run_uuid))
            for run_uuid in run_uuids - wanted:
                run = tx.conn.execute(sa.select(runs.c.state, runs.c.executor).where(runs.c.uuid == run_uuid)).one()
                tx.conn.execute(sa.update(runs).where(runs.c.uuid == run_uuid)
                                .values(desired="cancel", reason=why(run_uuid)))
                if run.state == State.QUEUED.value or run.executor == DRIVER:
                    self.transition(tx, Kind.RUN, run_uuid, State(run.state), State.CANCELLED, why(run_uuid),
                                    finished_at=now)
                # A running process is stopped by the reconciler, which then ends the run.
        return doomed_uuids

    def invalidate(self, caller: Caller, run_ref: str) -> str:
        """Mark a finished run's result bad, so that no job reuses it again; returns its uuid.

        A job may invalidate only runs that jobs of its own subtree started."""
        with self.write() as tx:
            found = tx.conn.execute(
                sa.select(runs.c.uuid, runs.c.state, jobs.c.path)
                .select_from(runs.join(jobs, jobs.c.uuid == runs.c.origin_job_uuid))
                .where(runs.c.uuid.like(run_ref + "%")).limit(2)
            ).all()
            if not found or len(run_ref) < 4:
                raise NotFound(f"no run {run_ref}", field="run_uuid")
            if len(found) > 1:
                raise InvalidSpec(f"{run_ref!r} names more than one run", field="run_uuid")
            [(run_uuid, state, origin_path)] = found
            if caller.kind == "job" and not origin_path.startswith(caller.path):
                raise PermissionDenied(f"run {run_uuid} was started outside the subtree of job {caller.job_uuid}",
                                       field="run_uuid")
            if not State(state).terminal:
                raise Conflict(f"run {run_uuid} is still {state}: cancel it, or invalidate it once it ends",
                               field="run_uuid")
            tx.conn.execute(sa.update(runs).where(runs.c.uuid == run_uuid).values(desired="invalid"))
        return str(run_uuid)

    def finish_driver(self, caller: Caller, exit_code: int, now: float) -> None:
        if caller.kind != "job":
            raise PermissionDenied("only a driver's own token can finish it", field="token")
        run = self.run_of(caller.job_uuid or "")
        if run["executor"] != DRIVER:
            raise PermissionDenied(f"job {caller.job_uuid} is not a driver", field="token")
        new = State.SUCCEEDED if exit_code == 0 else State.FAILED
        with self.write() as tx:
            self.transition(tx, Kind.RUN, run["uuid"], State.RUNNING, new, f"exit code {exit_code}",
                            exit_code=exit_code, finished_at=now)

    # -- for the reconciler --------------------------------------------------------------------

    def pending_runs(self, limit: int, after_seq: int = 0) -> list[dict[str, Any]]:
        """The head of the queue (of runs newer than `after_seq`) by priority, then submit order."""
        with self.read() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(runs.c.uuid, runs.c.cpu_millis, runs.c.memory, runs.c.priority, runs.c.seq,
                          runs.c.executor)
                .where(runs.c.state == State.QUEUED.value, runs.c.desired == "run", runs.c.seq > after_seq)
                .order_by(runs.c.priority.desc(), runs.c.seq).limit(limit)
            ).mappings()]

    def active_runs(self) -> list[dict[str, Any]]:
        """What the reconciler needs of each running run, every pass."""
        with self.read() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(runs.c.uuid, runs.c.executor, runs.c.node, runs.c.pid, runs.c.handle, runs.c.workdir,
                          runs.c.desired,
                          runs.c.reason, runs.c.started_at, runs.c.timeout, runs.c.cpu_millis, runs.c.memory,
                          runs.c.state, runs.c.retries, runs.c.attempt, runs.c.memory_on_oom)
                .where(runs.c.state == State.RUNNING.value)
            ).mappings()]

    def held_runs(self) -> list[tuple[str, str]]:
        """(run, the job that holds it) for every run waiting on a condition."""
        with self.read() as conn:
            return [tuple(row) for row in conn.execute(  # type: ignore[misc]
                sa.select(runs.c.uuid, runs.c.origin_job_uuid)
                .where(runs.c.state == State.QUEUED.value, runs.c.desired == "hold")
            ).all()]

    def condition_of(self, job_uuid: str) -> dict[str, Any]:
        with self.read() as conn:
            return json.loads(conn.execute(sa.select(jobs.c.spec).where(jobs.c.uuid == job_uuid)).scalar_one())["when"]

    def job_states(self, uuids: set[str]) -> dict[str, str]:
        with self.read() as conn:
            return dict(conn.execute(sa.select(jobs.c.uuid, jobs.c.state).where(jobs.c.uuid.in_(uuids))).all())

    def release(self, run_uuids: list[str], now: float) -> None:
        """Held runs whose conditions hold may be scheduled now, signed over what they read.

        Their inputs' content is known now, and a condition that held changes no result: a run
        with that final signature, if there is one, is reused instead (this one ends unneeded)."""
        with self.write() as tx:
            for run_uuid, spec_json in tx.conn.execute(
                    sa.select(runs.c.uuid, runs.c.spec).where(runs.c.uuid.in_(run_uuids), runs.c.desired == "hold",
                                                              runs.c.state == State.QUEUED.value)).all():
                spec = json.loads(spec_json)
                spec.pop("when_runs", None)
                producers = {ref["job"] for ref in spec.get("inputs", {}).values() if "job" in ref}
                _sign_inputs(spec, self._facts(tx.conn, producers))
                parts = signature_parts(spec)
                sig = signature(parts)
                found = self._reusable(tx.conn, {sig}).get(sig) if _may_reuse(spec) else None
                tx.conn.execute(sa.update(runs).where(runs.c.uuid == run_uuid).values(
                    desired="run", signature=sig, sig_parts=json.dumps(parts), spec=json.dumps(spec)))
                if found is None:
                    continue
                moved = tx.conn.execute(
                    sa.update(jobs).where(jobs.c.run_uuid == run_uuid, jobs.c.state == State.QUEUED.value)
                    .values(run_uuid=found.uuid, reused=True, state=found.state).returning(jobs.c.uuid, jobs.c.path)
                ).all()
                tx.events.extend(JobEvent(u, p, found.state, found.reason, found.exit_code) for u, p in moved)
                self.transition(tx, Kind.RUN, run_uuid, State.QUEUED, State.CANCELLED,
                                f"not needed: its jobs reuse run {found.uuid}", finished_at=now)

    def run_for_start(self, tx: Tx, run_uuid: str) -> dict[str, Any]:
        row = tx.conn.execute(
            sa.select(runs.c.spec, runs.c.origin_job_uuid, runs.c.executor, runs.c.cpu_millis, runs.c.memory,
                      runs.c.attempt).where(runs.c.uuid == run_uuid)
        ).mappings().one()
        return {**row, "spec": json.loads(row["spec"])}

    def set_run_values(self, tx: Tx, run_uuid: str, values: dict[str, Any]) -> None:
        """Facts about a run that are not its state (pid, work dir, ...)."""
        tx.conn.execute(sa.update(runs).where(runs.c.uuid == run_uuid).values(**values))

    def set_desired(self, run_uuid: str, desired: str) -> bool:
        """Ask a run that is still wanted to stop for `desired` ("timeout"); False if it was cancelled."""
        with self.write() as tx:
            return tx.conn.execute(
                sa.update(runs).where(runs.c.uuid == run_uuid, runs.c.desired == "run").values(desired=desired)
            ).rowcount == 1

    def new_run_token(self, tx: Tx, run_uuid: str) -> str:
        """A fresh token for a run about to start; only its hash is kept."""
        token = secrets.token_urlsafe(24)
        tx.conn.execute(sa.update(runs).where(runs.c.uuid == run_uuid).values(token_hash=hash_token(token)))
        return token

    # -- explain -------------------------------------------------------------------------------

    def why(self, job_uuid: str) -> dict[str, Any]:
        """Whether a job ran or reused, and what differed from the nearest earlier run of its name."""
        job = self.get_job(job_uuid)
        with self.read() as conn:
            run = conn.execute(sa.select(runs).where(runs.c.uuid == job["run_uuid"])).mappings().one()
            parts = json.loads(run["sig_parts"])
            if job["reused"]:
                return {"reused": True, "run_uuid": run["uuid"], "parts": parts, "compared": None,
                        "explanation": f"reused run {run['uuid']} (started by job {run['origin_job_uuid']}, "
                                       f"{run['state']})"}
            earlier = conn.execute(
                sa.select(runs).where(runs.c.name == run["name"], runs.c.seq < run["seq"])
                .order_by(runs.c.seq.desc()).limit(1)
            ).mappings().first()
        spec = json.loads(job["spec"])
        if earlier is None:
            text = f"ran: no earlier run is named {run['name']!r}"
            return {"reused": False, "run_uuid": run["uuid"], "parts": parts, "compared": None, "explanation": text}
        old_parts = json.loads(earlier["sig_parts"])
        differing = [p for p in parts if parts[p] != old_parts.get(p)]
        if differing:
            text = f"ran: differs from run {earlier['uuid']} in {', '.join(differing)}"
        elif earlier["desired"] == "invalid":
            text = f"ran: run {earlier['uuid']} has the same signature but its result was invalidated"
        elif spec.get("no_reuse") or spec.get("driver"):
            text = f"ran: reuse was turned off, though run {earlier['uuid']} has the same signature"
        else:
            text = (f"ran: run {earlier['uuid']} has the same signature but ended {earlier['state']}, "
                    "and only succeeded, queued or running runs are reused")
        return {"reused": False, "run_uuid": run["uuid"], "parts": parts, "explanation": text,
                "compared": {"uuid": earlier["uuid"], "parts": old_parts}, "differing": differing}


def _may_reuse(spec: dict[str, Any]) -> bool:
    return not (spec.get("no_reuse") or spec.get("driver"))


class Fact(NamedTuple):
    state: str  # the job's
    run_uuid: str
    executor: str
    output: str


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
             token: str | None, now: float) -> dict[str, Any]:
    driver = bool(spec.get("driver"))
    return {
        "uuid": run_uuid, "origin_job_uuid": job_uuid, "signature": sig, "sig_parts": json.dumps(parts),
        "name": spec["name"], "state": (State.RUNNING if driver else State.QUEUED).value, "reason": "",
        "desired": "hold" if "when_runs" in spec else "run", "executor": DRIVER if driver else spec["executor"], "cpu_millis": spec["cpu_millis"],
        "memory": spec["memory"], "priority": spec.get("priority", 0), "timeout": spec.get("timeout", 0.0),
        "retries": spec.get("retries", 0), "attempt": 1, "memory_on_oom": spec.get("memory_on_oom", 1.0),
        "spec": spec_json,
        "token_hash": hash_token(token) if token else "", "node": spec.get("driver_host", "") if driver else "",
        "pid": spec.get("driver_pid", 0) if driver else 0, "handle": "", "workdir": "",
        "cpu_enforced": False, "exit_code": None, "output": "", "created_at": now,
        "started_at": now if driver else None, "finished_at": None,
    }


def _view(job: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """`VIEW` of a job just stored, from its row and its run's, without reading them back."""
    in_step = job["state"] == run["state"]
    exit_code = run["exit_code"] if in_step else None
    return {
        "uuid": job["uuid"], "name": job["name"], "owner": job["owner"],
        "spawned_by_job_uuid": job["spawned_by_job_uuid"] or "", "state": job["state"],
        "reason": run["reason"] if in_step else "", "run_uuid": run["uuid"], "reused": job["reused"],
        "run_origin_job_uuid": run["origin_job_uuid"], "exit_code": exit_code or 0,
        "has_exit_code": exit_code is not None, "cpu_millis": job["cpu_millis"], "memory": job["memory"],
        "created_at": job["created_at"], "started_at": run["started_at"] or 0.0,
        "finished_at": run["finished_at"] or 0.0, "node": run["node"], "executor": run["executor"],
        "cpu_enforced": run["cpu_enforced"], "signature": run["signature"],
        "output": run["output"] or "", "output_dir": run["workdir"] + "/out" if run["workdir"] else "",
        "run_state": run["state"],
    }


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA case_sensitive_like=ON")  # lets `path LIKE 'prefix%'` use its index
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


@contextlib.contextmanager
def _db_errors() -> Iterator[None]:
    try:
        yield
    except sa.exc.SQLAlchemyError as e:  # the statement stays in the log, not in the answer
        raise JobnestError(f"store error: {e.__class__.__name__}: {getattr(e, 'orig', None) or e}") from e
