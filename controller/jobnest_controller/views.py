"""Jobs as clients see them: one job, a listing, a uuid prefix resolved.

A job's state, reason, exit code and times are its run's, unless the job ended apart from its
run (cancelled alone while other jobs still want the run, or its condition never held): then
they are the job's own. `Store` takes `Views` as a part; the server and the CLI's listings read
through it.
"""

import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from jobnest.errors import InvalidSpec, NotFound

from .models import jobs, runs

if TYPE_CHECKING:
    from .auth import Caller
    from .store import Store

_apart = jobs.c.end_state != ""
STATE = sa.case((_apart, jobs.c.end_state), else_=runs.c.state)
# A job that ended before its shared run started never started.
_started = sa.case((_apart & (runs.c.started_at > jobs.c.finished_at), None), else_=runs.c.started_at)
VIEW: dict[str, sa.ColumnElement[Any]] = {
    "uuid": jobs.c.uuid, "name": jobs.c.name, "owner": jobs.c.owner,
    "spawned_by_job_uuid": sa.func.coalesce(jobs.c.spawned_by_job_uuid, ""), "state": STATE,
    "reason": sa.case((_apart, jobs.c.reason), else_=runs.c.reason),
    "run_uuid": jobs.c.run_uuid, "reused": jobs.c.reused, "run_origin_job_uuid": runs.c.origin_job_uuid,
    "exit_code": sa.case((_apart, 0), else_=sa.func.coalesce(runs.c.exit_code, 0)),
    "has_exit_code": sa.type_coerce(sa.and_(~_apart, runs.c.exit_code.is_not(None)), sa.Boolean),
    "cpu_millis": jobs.c.cpu_millis, "memory": jobs.c.memory, "created_at": jobs.c.created_at,
    "started_at": sa.func.coalesce(_started, 0.0),
    "finished_at": sa.func.coalesce(sa.case((_apart, jobs.c.finished_at), else_=runs.c.finished_at), 0.0),
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
# `runs.state` for statements whose keys (uuids, signatures) pick the rows: as an expression, which
# no index serves. Without it SQLite's planner, which has no statistics, prefers the index on state
# to a list of five keys or more, and so reads every queued run to find five.
RUN_STATE = runs.c.state.concat("")


def _like(pattern: str) -> str:
    """A shell pattern (* and ?) as a LIKE pattern, escaped with a backslash."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def insert_new(table: sa.Table) -> dict[str, Any]:
    """`INSERT ... ON CONFLICT DO NOTHING` into `table`, by dialect name: rows already there stay."""
    return {"sqlite": sqlite_insert(table).on_conflict_do_nothing(),
            "postgresql": postgresql_insert(table).on_conflict_do_nothing()}


def one_of(column: sa.ColumnElement[Any], values: Sequence[str]) -> sa.ColumnElement[bool]:
    """`column IN values` for a fixed list, as equalities compiled once: an IN list is rendered
    again at every execution."""
    return sa.or_(*(column == value for value in values))


class Rows(list[tuple[Any, ...]]):
    """The rows a `Fast` statement read, as tuples, with the names of their columns."""

    def __init__(self, rows: list[tuple[Any, ...]], names: list[str]) -> None:
        super().__init__(rows)
        self.names = names

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.names, row)) for row in self]

    def scalars(self) -> list[Any]:
        return [row[0] for row in self]

    def scalar(self) -> Any:
        return self[0][0] if self else None


class Fast:
    """A statement compiled once for each kind of database and run on the driver's own cursor.
    On SQLite a small query takes about 6 µs, and SQLAlchemy's work around each execution about
    17 µs more, so the hot paths (a submit, a reconciler's pass) go this way. Driver errors come
    out as SQLAlchemy's, as from any other statement."""

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        columns = list(statement.exported_columns)  # what it selects or returns
        self.names = [c.key for c in columns]
        self._bools = [i for i, c in enumerate(columns) if isinstance(c.type, sa.Boolean)]
        self._forms: dict[str, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}

    def _form(self, dialect: sa.Dialect) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
        form = self._forms.get(dialect.name)
        if form is None:
            compiled = self.statement.compile(dialect=dialect)
            order = tuple(compiled.positiontup or ()) if dialect.positional else None
            form = self._forms[dialect.name] = (compiled.string, order, compiled.construct_params(_check=False))
        return form

    def render(self, dialect: sa.Dialect, params: dict[str, Any], keys: Sequence[Any] | None = None
               ) -> tuple[str, Any]:
        """The SQL and the arguments the driver is given."""
        sql, order, defaults = self._form(dialect)
        values = {**defaults, **params}
        if keys is not None:  # the expanding IN list: one placeholder a key
            if order is not None:
                sql = sql.replace("__[POSTCOMPILE_keys]", ", ".join("?" * len(keys)))
                args: list[Any] = []
                for name in order:
                    if name == "keys":
                        args.extend(keys)
                    else:
                        args.append(values[name])
                return sql, args
            sql = sql.replace("__[POSTCOMPILE_keys]", ", ".join(f"%(keys_{i})s" for i in range(len(keys))))
            values.update((f"keys_{i}", key) for i, key in enumerate(keys))
        return sql, (tuple(values[name] for name in order) if order is not None else values)

    def run(self, conn: Connection, params: dict[str, Any] | None = None, keys: Sequence[Any] | None = None
            ) -> Rows:
        sql, args = self.render(conn.dialect, params or {}, keys)
        rows = raw(conn, sql, args)
        if self._bools and rows:
            rows = [tuple(bool(v) if i in self._bools else v for i, v in enumerate(row)) for row in rows]
        return Rows(rows, self.names)

    def run_many(self, conn: Connection, params: list[dict[str, Any]]) -> None:
        if params:
            rendered = [self.render(conn.dialect, p) for p in params]
            raw(conn, rendered[0][0], [args for _, args in rendered], many=True)


def raw(conn: Connection, sql: str, args: Any, many: bool = False) -> list[tuple[Any, ...]]:
    """Run `sql` on the driver's cursor of `conn` (within its transaction); the rows it returns."""
    dbapi = conn.dialect.loaded_dbapi
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if many:
            cursor.executemany(sql, args)
        else:
            cursor.execute(sql, args)
        return cursor.fetchall() if cursor.description else []
    except dbapi.Error as e:
        if conn.dialect.is_disconnect(e, conn.connection.dbapi_connection, cursor):
            conn.invalidate(e)
        raise sa.exc.DBAPIError.instance(sql, args, e, dbapi.Error) from e
    finally:
        cursor.close()


class ByKeys:
    """A statement over a list of keys (uuids, signatures), built once in two forms: `= :key`
    for a single key, as most calls have, and an IN list. `execute` takes at most `IN_CHUNK` keys
    (see `chunks`)."""

    def __init__(self, column: sa.ColumnElement[Any], make: Callable[[sa.ColumnElement[bool]], Any]) -> None:
        self.one = Fast(make(column == sa.bindparam("key")))
        self.many = Fast(make(column.in_(sa.bindparam("keys", expanding=True))))

    def execute(self, conn: Connection, keys: Sequence[str], **params: Any) -> Rows:
        if len(keys) == 1:
            return self.one.run(conn, {"key": keys[0], **params})
        return self.many.run(conn, params, keys=keys)


# Built once: building a statement (and its cache key) costs more than running it.
GET_JOB = Fast(sa.select(*VIEW_COLUMNS, jobs.c.spec, jobs.c.path).select_from(JOB_FROM)
                .where(jobs.c.uuid == sa.bindparam("uuid")))
GET_JOBS = ByKeys(jobs.c.uuid, sa.select(*VIEW_COLUMNS).select_from(JOB_FROM).where)
JOB_STATES = ByKeys(jobs.c.uuid, sa.select(jobs.c.uuid, STATE).select_from(JOB_FROM).where)
JOB_PATH = Fast(sa.select(jobs.c.path).where(jobs.c.uuid == sa.bindparam("uuid")))
JOB_SCOPE = Fast(sa.select(jobs.c.path, jobs.c.owner).where(jobs.c.uuid == sa.bindparam("uuid")))
RUN_OF = Fast(sa.select(runs).select_from(JOB_FROM).where(jobs.c.uuid == sa.bindparam("uuid")))
HEX_PREFIX = re.compile(r"[0-9a-f]{4,32}")  # of a uuid, as people type it
IN_CHUNK = 5000  # uuids per IN list: well under every database's limit on parameters


def chunks(items: Sequence[str], size: int = IN_CHUNK) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def view(job: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """`VIEW` of a job just stored (so in step with its run), from its row and its run's."""
    return {
        "uuid": job["uuid"], "name": job["name"], "owner": job["owner"],
        "spawned_by_job_uuid": job["spawned_by_job_uuid"] or "", "state": run["state"],
        "reason": run["reason"], "run_uuid": run["uuid"], "reused": job["reused"],
        "run_origin_job_uuid": run["origin_job_uuid"], "exit_code": run["exit_code"] or 0,
        "has_exit_code": run["exit_code"] is not None, "cpu_millis": job["cpu_millis"], "memory": job["memory"],
        "created_at": job["created_at"], "started_at": run["started_at"] or 0.0,
        "finished_at": run["finished_at"] or 0.0, "node": run["node"], "executor": run["executor"],
        "cpu_enforced": run["cpu_enforced"], "signature": run["signature"],
        "output": run["output"] or "", "output_dir": run["workdir"] + "/out" if run["workdir"] else "",
        "run_state": run["state"],
    }


class Views:
    def get_job(self: "Store", uuid: str) -> dict[str, Any]:
        """A job as `VIEW`, with its spec and path."""
        return self._of_job(GET_JOB, uuid)

    def _of_job(self: "Store", query: Fast, uuid: str) -> dict[str, Any]:
        with self.read() as conn:
            rows = query.run(conn, {"uuid": uuid}).dicts()
        if not rows:
            raise NotFound(f"no job {uuid}", field="uuid")
        return rows[0]

    def get_jobs(self: "Store", uuids: list[str], conn: Connection | None = None) -> list[dict[str, Any]]:
        """Jobs as `VIEW`, in the order of `uuids`; on `conn` when given (a write not committed yet)."""
        if conn is None:
            with self.read() as conn:
                return self.get_jobs(uuids, conn)
        by_uuid = {}
        for chunk in chunks(uuids):
            by_uuid.update((r["uuid"], r) for r in GET_JOBS.execute(conn, chunk).dicts())
        return [by_uuid[u] for u in uuids]

    def job_states(self: "Store", uuids: set[str], conn: Connection | None = None) -> dict[str, str]:
        if conn is None:
            with self.read() as conn:
                return self.job_states(uuids, conn)
        found: dict[str, str] = {}
        for chunk in chunks(list(uuids)):
            found.update(JOB_STATES.execute(conn, chunk))
        return found

    def list_jobs(self: "Store", *, subtree_path: str | None = None, parent: str | None = None,
                  states: list[str] | None = None, roots: bool = False, limit: int = 0, owner: str | None = None,
                  name: str = "", newest_first: bool = False, chunk: int = 5000) -> Iterator[Sequence[sa.Row[Any]]]:
        """Jobs as `LIST_FIELDS` rows (tuples), in chunks, by subtree, parent, state, owner and
        name (a shell pattern).

        A subtree comes in tree order (each job before its children, siblings in submit order),
        straight off the path index; anything else in submit order, or newest first.
        """
        query = sa.select(*LIST_COLUMNS).select_from(JOB_FROM)
        if subtree_path:
            query = query.where(jobs.c.path.like(subtree_path + "%")).order_by(jobs.c.path)
        else:
            query = query.order_by(jobs.c.seq.desc() if newest_first else jobs.c.seq)
        if name:
            query = query.where(jobs.c.name.like(_like(name), escape="\\"))
        if parent:
            query = query.where(jobs.c.spawned_by_job_uuid == parent)
        if roots:
            query = query.where(jobs.c.spawned_by_job_uuid.is_(None))
        if states:
            query = query.where(STATE.in_(states))
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        if limit:
            query = query.limit(limit)
        with self.read() as conn:
            yield from conn.execution_options(yield_per=chunk).execute(query).partitions(chunk)

    def resolve(self: "Store", ref: str, caller: "Caller") -> str:
        """The full uuid of the job that `ref` names: a uuid, a unique prefix of one (4+ hex
        digits), or the name of exactly one job the caller may see."""
        if len(ref) == 32 and HEX_PREFIX.fullmatch(ref):
            return ref
        with self.read() as conn:
            found = conn.execute(sa.select(jobs.c.uuid).where(jobs.c.uuid.like(ref + "%")).limit(2)
                                 ).scalars().all() if HEX_PREFIX.fullmatch(ref) else []
            if len(found) > 1:
                raise InvalidSpec(f"{ref!r} names more than one job; give more of the uuid", field="uuid")
            if not found and "\0" not in ref:  # no name holds a NUL (PostgreSQL refuses one in a query)
                query = sa.select(jobs.c.uuid).where(jobs.c.name == ref).order_by(jobs.c.seq.desc()).limit(100)
                if caller.kind != "admin":
                    query = query.where(jobs.c.owner == caller.name, jobs.c.path.like(caller.path + "%"))
                found = conn.execute(query).scalars().all()
        if not found:
            raise NotFound(f"no job {ref[:80]!r} (an id, a prefix of one, or a job's name)", field="uuid")
        if len(found) > 1:
            many = "more than 99" if len(found) == 100 else len(found)
            raise InvalidSpec(f"{ref[:80]!r} names {many} jobs; give an id (the newest is {found[0][:8]})",
                              field="uuid")
        return str(found[0])

    def names_of(self: "Store", uuids: set[str]) -> dict[str, tuple[str, str, str]]:
        """uuid -> (name, path, owner) of the jobs of `uuids` that exist."""
        found = {}
        with self.read() as conn:
            for chunk in chunks(sorted(uuids)):
                for uuid, name, path, owner in conn.execute(
                        sa.select(jobs.c.uuid, jobs.c.name, jobs.c.path, jobs.c.owner).where(jobs.c.uuid.in_(chunk))):
                    found[uuid] = (name, path, owner)
        return found

    def job_path(self: "Store", uuid: str) -> str:
        return self.job_scope(uuid)[0]

    def job_scope(self: "Store", uuid: str) -> tuple[str, str]:
        """A job's path and owner: what decides who may see it."""
        with self.read() as conn:
            found = JOB_SCOPE.run(conn, {"uuid": uuid})
        if not found:
            raise NotFound(f"no job {uuid}", field="uuid")
        return found[0]

    def run_of(self: "Store", job_uuid: str) -> dict[str, Any]:
        return self._of_job(RUN_OF, job_uuid)

    def run_counts(self: "Store") -> dict[str, int]:
        with self.read() as conn:
            return dict(conn.execute(sa.select(runs.c.state, sa.func.count()).group_by(runs.c.state)).all())
