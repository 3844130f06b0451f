"""Who makes a call: user tokens and job tokens, checked against the store.

`Store` takes `Tokens` as a part; the server calls `authenticate` for every call made with a token.
"""

import hashlib
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa

from jobnest.errors import PermissionDenied, Unauthenticated

from .models import jobs, runs, user_tokens
from .states import State
from .views import Fast

if TYPE_CHECKING:
    from .store import Store


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call: an admin, a person or driver with a user token, or a job with its token."""

    kind: str  # "admin", "user" or "job"
    name: str
    job_uuid: str | None = None
    path: str = ""  # a job caller's scope: its own subtree
    run_uuid: str = ""  # a job caller's run, which its token belongs to

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.job_uuid or self.name}"

    def check_scope(self, job_uuid: str, path: str) -> None:
        if self.kind == "job" and not path.startswith(self.path):
            raise PermissionDenied(f"job {job_uuid} is outside the subtree of job {self.job_uuid}", field="uuid")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Built once: every call with a token runs them.
JOB_TOKEN = Fast(sa.select(runs.c.state, runs.c.desired, runs.c.uuid, jobs.c.uuid, jobs.c.path, jobs.c.owner)
                 .select_from(runs.join(jobs, jobs.c.uuid == runs.c.origin_job_uuid))
                 .where(runs.c.token_hash == sa.bindparam("digest")))
USER_TOKEN = Fast(sa.select(user_tokens.c.name).where(user_tokens.c.token_hash == sa.bindparam("digest")))


class Tokens:
    def authenticate(self: "Store", token: str) -> Caller:
        digest = hash_token(token)
        with self.read() as conn:
            rows = JOB_TOKEN.run(conn, {"digest": digest})
            if rows:
                [(state, desired, run_uuid, job_uuid, path, owner)] = rows
                if state != State.RUNNING.value or desired != "run":
                    raise Unauthenticated("token expired: its job's run has ended", field="token")
                return Caller("job", owner, job_uuid, path, run_uuid)
            name = USER_TOKEN.run(conn, {"digest": digest}).scalar()
        if name is None:
            raise Unauthenticated("token not recognised", field="token")
        return Caller("user", name)

    def create_user_token(self: "Store", name: str, now: float) -> str:
        token = "jn_" + secrets.token_urlsafe(24)
        with self.write() as tx:
            tx.conn.execute(sa.insert(user_tokens).values(name=name, token_hash=hash_token(token), created_at=now))
        return token
