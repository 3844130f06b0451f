"""The store: the single source of truth for jobs, runs and tokens.

The gRPC server calls it for every request and the reconciler for every state change. This module
holds the transaction primitives (`write`, `read`, `transition`), cancelling and what the
reconciler reads; its parts by concept are `auth.Tokens`, `submit.Submits` (submit and reuse),
`views.Views` and `explain.Explain`. Hot paths are SQLAlchemy Core over the SQLModel tables.
Every state change goes through `transition()`, a compare-and-set against the table in
`states.py`. No SQLAlchemy error leaves the store: they become `jobnest.errors` types.
"""

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from jobnest.errors import Conflict, InvalidSpec, JobnestError, NotFound, PermissionDenied, Unavailable

from .auth import Caller, Tokens, hash_token
from .data import Data
from .events import Bus, JobEvent
from .executors.base import Started
from .explain import Explain
from .lease import Leases
from .retention import Retention
from .models import attempts, holdings, jobs, leader, pins, requests, runs, user_tokens
from .states import ALLOWED, LIVE, Kind, State
from .submit import DRIVER, INDEXED, PathKeys, Submission, Submits
from .views import (HEX_PREFIX, JOB_FROM, JOB_PATH, LIST_FIELDS, RUN_STATE, VIEW, ByKeys, Fast, Views, chunks,
                    insert_new, one_of, raw)

__all__ = ["Caller", "DRIVER", "Kind", "LIST_FIELDS", "Store", "Tx", "VIEW", "hash_token", "jobs", "runs"]

LIVE_VALUES = [s.value for s in LIVE]
ADD_ATTEMPT = insert_new(attempts)
CANNOT = "condition cannot hold: "  # how a job cancelled by its condition's end says so
ROOT = "; root cause: "
CANCEL_CHUNK = 250  # jobs a Cancel ends per transaction, so that submits go on meanwhile
# Between those transactions: without it the cancelling thread takes the lock again before a
# submit's thread, waiting for Python's interpreter lock, has even asked for it.
CANCEL_PAUSE = 0.005


# The jobs that follow their runs (those that did not end apart), built once.
FOLLOWERS = ByKeys(jobs.c.run_uuid, sa.select(jobs.c.uuid, jobs.c.path).where(jobs.c.end_state == "").where)
_QUEUED_RUNS = (sa.select(*(runs.c[name] for name in INDEXED), jobs.c.owner)
                .select_from(runs.join(jobs, jobs.c.uuid == runs.c.origin_job_uuid)))
QUEUED_RUNS = Fast(_QUEUED_RUNS.where(runs.c.state == State.QUEUED.value))
SOME_QUEUED_RUNS = ByKeys(runs.c.uuid, _QUEUED_RUNS.where(RUN_STATE == State.QUEUED.value).where)
ACTIVE_RUNS = Fast(sa.select(runs.c.uuid, runs.c.executor, runs.c.node, runs.c.pid, runs.c.handle, runs.c.workdir,
                             runs.c.desired, runs.c.reason, runs.c.started_at, runs.c.timeout, runs.c.cpu_millis,
                             runs.c.memory, runs.c.state, runs.c.retries, runs.c.attempt, runs.c.memory_on_oom,
                             runs.c.lease_until, jobs.c.owner)
                   .select_from(runs.join(jobs, jobs.c.uuid == runs.c.origin_job_uuid))
                   .where(runs.c.state == State.RUNNING.value))
FOR_START = ByKeys(runs.c.uuid, sa.select(runs.c.uuid, runs.c.spec, runs.c.origin_job_uuid, runs.c.executor,
                                          runs.c.cpu_millis, runs.c.memory, runs.c.attempt).where)
# A job that still wants a held run, once the one that held it is cancelled.
HEIR = Fast(sa.select(jobs.c.uuid).select_from(JOB_FROM)
            .where(jobs.c.run_uuid == sa.bindparam("run"), jobs.c.end_state == "", jobs.c.desired == "run",
                   RUN_STATE == State.QUEUED.value, runs.c.desired == "hold").limit(1))
SET_STARTED = Fast(sa.update(runs).where(runs.c.uuid == sa.bindparam("b_run")).values(
    pid=sa.bindparam("b_pid"), handle=sa.bindparam("b_handle"), workdir=sa.bindparam("b_workdir"),
    cpu_enforced=sa.bindparam("b_cpu_enforced")))
SET_TOKENS = Fast(sa.update(runs).where(runs.c.uuid == sa.bindparam("b_run")).values(
    token_hash=sa.bindparam("b_token_hash"), workdir=sa.bindparam("b_workdir")))


@dataclass(slots=True)
class Tx:
    conn: Connection
    events: list[JobEvent] = field(default_factory=list)
    runs: set[str] = field(default_factory=set)  # runs moved or asked to stop: for the reconciler
    new_runs: list[dict[str, Any]] = field(default_factory=list)  # runs made, as the reconciler indexes them


class Store(Tokens, Submits, Views, Explain, Leases, Retention):
    def __init__(self, url: str, bus: Bus | None = None) -> None:
        self.url = url
        self.bus = bus or Bus()
        self.is_sqlite = url.startswith("sqlite")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        if self.is_sqlite:
            # The connection used last is taken again: its page cache is the one still warm.
            self.engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                           pool_use_lifo=True)
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_size=10, max_overflow=20)
        # Writers queue here, one at a time. SQLite allows no more anyway; on PostgreSQL it keeps
        # a submit that attaches to a run from racing the transition that ends that run, in this
        # one controller process.
        self._write_lock = threading.Lock()
        # Every write goes through one connection, kept: its page cache stays warm, as no other
        # connection changes the database.
        self._writer: Connection | None = None
        self._submissions: list[Submission] = []  # waiting for the next group commit
        self._submissions_lock = threading.Lock()
        self._last_seq: int | None = None  # the newest run's number, known once read
        self.path_keys = PathKeys()
        self.data: Data | None = None  # the stored bytes, which reuse checks are intact
        self._updates: dict[tuple[Kind, tuple[str, ...]], ByKeys] = {}
        try:
            SQLModel.metadata.create_all(self.engine)
            inspector = sa.inspect(self.engine)
            for table in (jobs, runs, requests, user_tokens, holdings, leader, pins, attempts):
                missing = {c.name for c in table.columns} - {c["name"] for c in inspector.get_columns(table.name)}
                if missing:
                    raise JobnestError(f"the store at {self.url} is older than this controller: table "
                                       f"{table.name} lacks {', '.join(sorted(missing))}; move it aside to start afresh")
        except sa.exc.SQLAlchemyError as e:
            raise JobnestError(f"cannot open the store at {self.url}: {e}") from e

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()

    @contextlib.contextmanager
    def write(self) -> Iterator[Tx]:
        """One write transaction; its changes are published once it commits. (Submits that queued
        up meanwhile store themselves: the first to take the lock stores them all.)"""
        with self._write_lock, self._transaction() as tx:
            yield tx

    @contextlib.contextmanager
    def _transaction(self, fenced: bool = True) -> Iterator[Tx]:
        """A transaction for the holder of the write lock, published (still under the lock, so
        in commit order) once it commits. Once the store's lease is held, a transaction checks
        first that it still is (see `lease.py`)."""
        with _db_errors():
            if self._writer is None:
                self._writer = self.engine.connect()
            with self._writer.begin():
                tx = Tx(self._writer)
                if fenced and self.epoch is not None:
                    self.check_lease(tx.conn)
                yield tx
        self.bus.publish(tx.events, tx.runs, tx.new_runs)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with _db_errors(), self.engine.connect() as conn:
            yield conn

    def _insert_many(self, conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
        """A plain DBAPI executemany: SQLAlchemy's per-row parameter handling costs more than the insert."""
        names = list(rows[0])
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        sql = f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join([mark] * len(names))})"
        raw(conn, sql, [tuple(row[n] for n in names) for row in rows], many=True)

    # -- state ---------------------------------------------------------------------------------

    def transition(self, tx: Tx, kind: Kind, uuid: str, expected: State, new: State, reason: str,
                   **values: Any) -> bool:
        """Move one job or run from `expected` to `new`; False if it was no longer `expected`."""
        return bool(self.transition_many(tx, kind, [uuid], expected, new, reason, **values))

    def transition_many(self, tx: Tx, kind: Kind, uuids: Sequence[str], expected: State, new: State,
                        reason: str, **values: Any) -> list[str]:
        """Move jobs or runs from `expected` to `new`; returns those that were still `expected`.

        A run's jobs follow it, except those that ended apart from it. A job moves on its own only
        to end apart from its run (`values` may then hold its `finished_at`), and only once.
        """
        if new not in ALLOWED[expected]:
            raise ValueError(f"{kind.value}: {expected.value} -> {new.value} is not a transition")
        moved: list[str] = []
        params = {f"v_{name}": value for name, value in values.items()}
        update = self._update(kind, tuple(values))
        if kind is Kind.RUN:
            for chunk in chunks(uuids):
                moved += update.execute(tx.conn, chunk, expected=expected.value, v_state=new.value, v_reason=reason,
                                        **params).scalars()
            tx.runs.update(moved)
            for chunk in chunks(moved):
                followers = FOLLOWERS.execute(tx.conn, chunk)
                tx.events.extend(JobEvent(u, p, new.value, reason, values.get("exit_code")) for u, p in followers)
            return moved
        if not new.terminal:
            raise ValueError(f"job: only a job's end is its own ({new.value} is its run's)")
        for chunk in chunks(uuids):
            ended = update.execute(tx.conn, chunk, v_end_state=new.value, v_reason=reason, **params)
            moved += [u for u, _ in ended]
            tx.events.extend(JobEvent(u, p, new.value, reason, None) for u, p in ended)
        return moved

    def _update(self, kind: Kind, names: tuple[str, ...]) -> ByKeys:
        """The compare-and-set UPDATE of `transition_many`, setting `names` too; built once for
        each set of names (building a statement costs more than running it)."""
        key = (kind, names)
        if key not in self._updates:
            sets = {name: sa.bindparam(f"v_{name}") for name in names}
            if kind is Kind.RUN:
                self._updates[key] = ByKeys(runs.c.uuid, lambda where: (
                    sa.update(runs).where(where, RUN_STATE == sa.bindparam("expected"))
                    .values(state=sa.bindparam("v_state"), reason=sa.bindparam("v_reason"), **sets)
                    .returning(runs.c.uuid)))
            else:
                self._updates[key] = ByKeys(jobs.c.uuid, lambda where: (
                    sa.update(jobs).where(where, jobs.c.end_state == "")
                    .values(end_state=sa.bindparam("v_end_state"), reason=sa.bindparam("v_reason"), **sets)
                    .returning(jobs.c.uuid, jobs.c.path)))
        return self._updates[key]

    # -- cancel and finish ---------------------------------------------------------------------

    def cancel(self, root_uuid: str, reason: str, now: float) -> list[str]:
        """Cancel a job and its whole live subtree; a run stops only when no live job wants it.

        Its jobs end a chunk per transaction, in tree order, so that submits go on meanwhile. A
        run that jobs of two chunks want stops with the second: the first's end alone."""
        path = self.job_path(root_uuid)
        with self.read() as conn:
            root_run = self._live_run(conn, root_uuid)
        cancelled: list[str] = []
        after: str | None = ""
        while after is not None:
            with self.write() as tx:
                done, after = self._cancel(tx, root_uuid, root_run, path, reason, now, after, CANCEL_CHUNK)
            cancelled += done
            time.sleep(CANCEL_PAUSE)
        return cancelled

    def cancel_holders(self, tx: Tx, doomed: list[tuple[str, str, str]], now: float) -> dict[str, str]:
        """Within `tx`, cancel each job (and its subtree) of `doomed` (run, job, reason): the job
        holding a held run whose condition can no longer hold. Returns, for each run still held
        because another job wants it, that job: its own condition decides next."""
        heirs = {}
        for run_uuid, job_uuid, reason in doomed:
            path = JOB_PATH.run(tx.conn, {"uuid": job_uuid}).scalar()
            self._cancel(tx, job_uuid, self._live_run(tx.conn, job_uuid), path, reason, now, "", 0)
            heir = HEIR.run(tx.conn, {"run": run_uuid}).scalar()
            if heir is not None:
                heirs[run_uuid] = heir
        return heirs

    def record_attempts(self, tx: Tx, rows: list[dict[str, Any]]) -> None:
        """Keep how attempts that ran ended (`models.Attempt` rows); one stored already stays."""
        if rows:
            tx.conn.execute(ADD_ATTEMPT[self.engine.dialect.name], rows)

    def attempts_of(self, run_uuid: str) -> list[dict[str, Any]]:
        with self.read() as conn:
            return [dict(r) for r in conn.execute(sa.select(attempts).where(attempts.c.run_uuid == run_uuid)
                                                  .order_by(attempts.c.attempt)).mappings()]

    def blame(self, conn: Connection, job_uuid: str, state: str) -> str:
        """How the job whose end decided a condition ended, by name and short id, and the root
        cause when it was itself cancelled by a condition."""
        row = conn.execute(sa.select(jobs.c.name, VIEW["reason"]).select_from(JOB_FROM)
                           .where(jobs.c.uuid == job_uuid)).first()
        name, reason = row if row is not None else ("?", "")
        said = f"job {name} ({job_uuid[:8]}) {state}"
        if ROOT in reason:
            return said + ROOT + reason.split(ROOT, 1)[1]
        if reason.startswith(CANNOT):
            return said + ROOT + reason.removeprefix(CANNOT)
        return f"{said}: {reason}" if state == State.FAILED.value and reason else said

    def _live_run(self, conn: Connection, job_uuid: str) -> str | None:
        """The run of a job that has not ended, if that run is live: the one a cancel of the job
        ends with the cancel's own reason (the others' reason names the job)."""
        return conn.execute(sa.select(jobs.c.run_uuid).select_from(JOB_FROM).where(
            jobs.c.uuid == job_uuid, jobs.c.end_state == "", one_of(RUN_STATE, LIVE_VALUES))).scalar()

    def _cancel(self, tx: Tx, root_uuid: str, root_run: str | None, path: str, reason: str, now: float,
                after: str, limit: int) -> tuple[list[str], str | None]:
        """End the live jobs of the subtree at `path` that come after `after`, at most `limit`
        (0: all); returns them and where to go on from (None: nothing is left). They are marked
        as no longer wanting their runs first, so that a run only they want stops."""
        query = (sa.select(jobs.c.uuid, jobs.c.run_uuid, jobs.c.path, runs.c.state, runs.c.executor)
                 .select_from(JOB_FROM)
                 .where(jobs.c.path.like(path + "%"), jobs.c.path > after, jobs.c.end_state == "",
                        one_of(RUN_STATE, LIVE_VALUES)).order_by(jobs.c.path))
        doomed = tx.conn.execute(query.limit(limit) if limit else query).all()
        if not doomed:
            return [], None
        doomed_uuids = [row.uuid for row in doomed]
        for chunk in chunks(doomed_uuids):
            tx.conn.execute(sa.update(jobs).where(jobs.c.uuid.in_(chunk)).values(desired="cancel"))
        wanted: set[str] = set()
        for chunk in chunks(list({row.run_uuid for row in doomed})):
            wanted.update(tx.conn.execute(sa.select(jobs.c.run_uuid).where(
                jobs.c.run_uuid.in_(chunk), jobs.c.desired == "run", jobs.c.end_state == "")).scalars())
        # Grouped by what each transition needs: the reason, and the state it moves from.
        groups: dict[tuple[str, State, bool], dict[str, None]] = {}
        for row in doomed:
            why = reason if row.run_uuid == root_run else f"{reason} (with job {root_uuid})"
            alone = row.run_uuid in wanted  # another job still wants the run: only this job ends
            groups.setdefault((why, State(row.state), alone), {})[row.uuid if alone else row.run_uuid] = None
            if not alone and row.state == State.RUNNING.value and row.executor == DRIVER:
                groups.setdefault((why, State.CANCELLED, False), {})[row.run_uuid] = None  # ends at once
        for (why, state, alone), members in groups.items():
            uuids = list(members)
            if alone:
                self.transition_many(tx, Kind.JOB, uuids, state, State.CANCELLED, why, finished_at=now)
            elif state is State.CANCELLED:  # drivers, which run outside the controller
                self.transition_many(tx, Kind.RUN, uuids, State.RUNNING, State.CANCELLED, why, finished_at=now)
            else:
                for chunk in chunks(uuids):
                    tx.conn.execute(sa.update(runs).where(runs.c.uuid.in_(chunk))
                                    .values(desired="cancel", reason=why))
                tx.runs.update(uuids)
                if state is State.QUEUED:  # a running process is stopped by the reconciler, which ends its run
                    self.transition_many(tx, Kind.RUN, uuids, State.QUEUED, State.CANCELLED, why, finished_at=now)
        more = limit and len(doomed) == limit
        return doomed_uuids, doomed[-1].path if more else None

    def invalidate(self, caller: Caller, run_ref: str) -> str:
        """Mark a finished run's result bad, so that no job reuses it again; returns its uuid.

        A caller may invalidate only runs that jobs within its reach (`Caller.sees`) started."""
        with self.write() as tx:
            if not HEX_PREFIX.fullmatch(run_ref):
                raise InvalidSpec(f"{run_ref[:80]!r} is not a run uuid or a prefix of one (4+ hex digits)",
                                  field="run_uuid")
            found = tx.conn.execute(
                sa.select(runs.c.uuid, runs.c.state, jobs.c.path, jobs.c.owner)
                .select_from(runs.join(jobs, jobs.c.uuid == runs.c.origin_job_uuid))
                .where(runs.c.uuid.like(run_ref + "%")).limit(2)
            ).all()
            if not found:
                raise NotFound(f"no run {run_ref}", field="run_uuid")
            if len(found) > 1:
                raise InvalidSpec(f"{run_ref!r} names more than one run", field="run_uuid")
            [(run_uuid, state, origin_path, owner)] = found
            if not caller.sees(origin_path, owner):
                where = f"the subtree of job {caller.job_uuid}" if caller.kind == "job" else f"{caller.name}'s jobs"
                raise PermissionDenied(f"run {run_uuid} was started outside {where}", field="run_uuid")
            if not State(state).terminal:
                raise Conflict(f"run {run_uuid} is still {state}: cancel it, or invalidate it once it ends",
                               field="run_uuid")
            tx.conn.execute(sa.update(runs).where(runs.c.uuid == run_uuid).values(desired="invalid"))
        return str(run_uuid)

    def _driver_run(self, caller: Caller) -> dict[str, Any]:
        if caller.kind != "job":
            raise PermissionDenied("only a driver's own token can do this", field="token")
        run = self.run_of(caller.job_uuid or "")
        if run["executor"] != DRIVER:
            raise PermissionDenied(f"job {caller.job_uuid} is not a driver", field="token")
        return run

    def renew_lease(self, caller: Caller, lease: float, now: float) -> None:
        """The driver of `caller` is still there: its lease lasts `lease` seconds from now."""
        run = self._driver_run(caller)
        with self.write() as tx:
            tx.conn.execute(sa.update(runs).where(runs.c.uuid == run["uuid"], runs.c.state == State.RUNNING.value)
                            .values(lease_until=now + lease))

    def finish_driver(self, caller: Caller, exit_code: int, now: float) -> None:
        run = self._driver_run(caller)
        new = State.SUCCEEDED if exit_code == 0 else State.FAILED
        with self.write() as tx:
            self.transition(tx, Kind.RUN, run["uuid"], State.RUNNING, new, f"exit code {exit_code}",
                            exit_code=exit_code, finished_at=now)

    # -- for the reconciler --------------------------------------------------------------------

    def queued_runs(self, uuids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """What the reconciler's index keeps of queued runs (all, or those of `uuids` still
        queued): ready (desired "run") or held on a condition (desired "hold")."""
        with self.read() as conn:
            if uuids is None:
                return QUEUED_RUNS.run(conn).dicts()
            return [r for chunk in chunks(uuids) for r in SOME_QUEUED_RUNS.execute(conn, chunk).dicts()]

    def conditions_of(self, job_uuids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The `when` condition of each job."""
        found = {}
        with self.read() as conn:
            for chunk in chunks(job_uuids):
                for uuid, spec in conn.execute(sa.select(jobs.c.uuid, jobs.c.spec).where(jobs.c.uuid.in_(chunk))):
                    found[uuid] = json.loads(spec)["when"]
        return found

    def active_runs(self) -> list[dict[str, Any]]:
        """What the reconciler needs of each running run, every pass."""
        with self.read() as conn:
            return ACTIVE_RUNS.run(conn).dicts()

    def runs_for_start(self, tx: Tx, run_uuids: Sequence[str]) -> dict[str, dict[str, Any]]:
        found = {}
        for chunk in chunks(run_uuids):
            for row in FOR_START.execute(tx.conn, chunk).dicts():
                found[row["uuid"]] = {**row, "spec": json.loads(row["spec"])}
        return found

    def set_started(self, tx: Tx, started: list[tuple[str, Started]]) -> None:
        """What the executors said of the runs they started (pid, handle, ...)."""
        if started:
            SET_STARTED.run_many(tx.conn, [{"b_run": uuid, "b_pid": s.pid, "b_handle": s.handle,
                                            "b_workdir": s.workdir, "b_cpu_enforced": s.cpu_enforced}
                                           for uuid, s in started])

    def set_desired(self, run_uuid: str, desired: str) -> bool:
        """Ask a run that is still wanted to stop for `desired` ("timeout", "log"); False if it was cancelled."""
        with self.write() as tx:
            return tx.conn.execute(
                sa.update(runs).where(runs.c.uuid == run_uuid, runs.c.desired == "run").values(desired=desired)
            ).rowcount == 1

    def new_run_tokens(self, tx: Tx, workdirs: dict[str, str]) -> dict[str, str]:
        """A fresh token for each run about to start, with its work dir; only the tokens' hashes are kept."""
        tokens = {uuid: secrets.token_urlsafe(24) for uuid in workdirs}
        if tokens:
            SET_TOKENS.run_many(tx.conn, [{"b_run": uuid, "b_token_hash": hash_token(token), "b_workdir": workdirs[uuid]}
                                          for uuid, token in tokens.items()])
        return tokens


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA wal_autocheckpoint=10000")
    cur.execute("PRAGMA case_sensitive_like=ON")  # lets `path LIKE 'prefix%'` use its index
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


@contextlib.contextmanager
def _db_errors() -> Iterator[None]:
    try:
        yield
    except sa.exc.OperationalError as e:  # the database is away, locked or failing: worth a retry
        raise Unavailable(f"the store is unavailable: {getattr(e, 'orig', None) or e}") from e
    except sa.exc.SQLAlchemyError as e:  # the statement stays in the log, not in the answer
        raise JobnestError(f"store error: {e.__class__.__name__}: {getattr(e, 'orig', None) or e}") from e
