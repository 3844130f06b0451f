"""The store's schema: jobs (what was asked), runs (what executed) and user tokens.

SQLModel declares the tables; the store's hot paths use their SQLAlchemy Core tables (`jobs`,
`runs`, ... at the end) directly.
"""

import sqlalchemy as sa
from sqlmodel import Field, SQLModel


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    seq: int | None = Field(default=None, primary_key=True)  # submit order
    uuid: str = Field(unique=True, index=True)
    name: str
    owner: str = Field(index=True)
    spawned_by_job_uuid: str | None = Field(default=None, index=True)
    # "/root/.../uuid/": a subtree is a prefix, so scope checks and listings are one indexed query.
    path: str = Field(index=True)
    run_uuid: str = Field(index=True)
    reused: bool = False
    # A job's state is its run's, unless it ended apart from it (cancelled alone, or its
    # condition never held): then these hold its own end state, reason and time.
    end_state: str = ""
    reason: str = ""
    finished_at: float | None = None
    desired: str = "run"  # "run" or "cancel"
    spec: str  # JSON of the JobSpec as submitted
    cpu_millis: int  # what this job asked for; its run may have been started by another job
    memory: int
    created_at: float


class Run(SQLModel, table=True):
    __tablename__ = "runs"

    seq: int | None = Field(default=None, primary_key=True)
    uuid: str = Field(unique=True, index=True)
    origin_job_uuid: str
    owner: str  # its origin job's: who may reuse it before it has succeeded (see `submit._shareable`)
    signature: str = Field(index=True)
    sig_parts: str  # JSON {part: sha256}
    name: str = Field(index=True)
    state: str = Field(index=True)
    reason: str = ""
    desired: str = "run"
    executor: str
    cpu_millis: int
    memory: int
    priority: int = 0
    timeout: float = 0.0  # seconds; 0: none
    retries: int = 0  # failed attempts run again, up to this many times
    attempt: int = 1
    memory_on_oom: float = 1.0  # an attempt that ran out of memory retries with this much more
    spec: str
    token_hash: str = Field(index=True)  # "" until the run starts (a driver's from the start)
    node: str = ""
    pid: int = 0
    handle: str = ""  # the executor's name for the run, such as a container id
    workdir: str = ""
    cpu_enforced: bool = False
    exit_code: int | None = None
    output: str = Field(default="", index=True)  # the digest of its output's manifest, once it succeeded
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    lease_until: float | None = None  # a driver's: it is lost once this passes unrenewed


class Request(SQLModel, table=True):
    """A Submit request already served, so a retry with its id creates nothing twice."""

    __tablename__ = "requests"

    caller: str = Field(primary_key=True)  # ids are the caller's own: another's never match
    request_id: str = Field(primary_key=True)
    job_uuids: str  # JSON list, in the order of the request
    body: str  # sha256 of the request's jobs: the same id with another body is refused


class UserToken(SQLModel, table=True):
    """A user's token: its name is the owner of the jobs it submits, so names are unique."""

    __tablename__ = "user_tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    token_hash: str = Field(unique=True, index=True)
    created_at: float
    expires_at: float | None = None


class Holding(SQLModel, table=True):
    """Stored bytes a caller sent, which it may name again: a blob or a program (by its owner),
    an upload's manifest (by its owner, within the scope of the caller that sent it)."""

    __tablename__ = "holdings"

    owner: str = Field(primary_key=True)
    digest: str = Field(primary_key=True)
    path: str = Field(primary_key=True)  # "/" for a person; a job's path for a job's upload


class Attempt(SQLModel, table=True):
    """An attempt of a run that ran and ended, as it ended: the run keeps only its latest."""

    __tablename__ = "attempts"

    run_uuid: str = Field(primary_key=True)
    attempt: int = Field(primary_key=True)
    exit_code: int | None = None
    reason: str
    memory: int
    node: str
    started_at: float | None = None
    finished_at: float


class Pin(SQLModel, table=True):
    """A job whose tree, runs and data `gc` keeps."""

    __tablename__ = "pins"

    job_uuid: str = Field(primary_key=True)
    pinned_at: float


class Leader(SQLModel, table=True):
    """The store's lease: the one controller that may serve from it (see `lease.py`)."""

    __tablename__ = "leader"

    id: int = Field(default=1, primary_key=True)
    holder: str
    epoch: int  # one more at each taking
    expires_at: float


# The SQLAlchemy Core tables behind the models, which the store's hot paths use.
jobs: sa.Table = Job.__table__  # type: ignore[attr-defined]
runs: sa.Table = Run.__table__  # type: ignore[attr-defined]
user_tokens: sa.Table = UserToken.__table__  # type: ignore[attr-defined]
requests: sa.Table = Request.__table__  # type: ignore[attr-defined]
holdings: sa.Table = Holding.__table__  # type: ignore[attr-defined]
leader: sa.Table = Leader.__table__  # type: ignore[attr-defined]
pins: sa.Table = Pin.__table__  # type: ignore[attr-defined]
attempts: sa.Table = Attempt.__table__  # type: ignore[attr-defined]
