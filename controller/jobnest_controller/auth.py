"""Who makes a call, and what it may see: user tokens, job tokens, and the data each holds.

The rule, one for every call: an admin sees everything; a user token sees its owner's jobs, runs
and data; a job token sees its own subtree, and the data that subtree made or sent. `Store` takes
`Tokens` as a part; the server calls `authenticate` for every call made with a token.
"""

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from jobnest.errors import Conflict, NotFound, PermissionDenied, Unauthenticated

from .models import holdings, jobs, runs, user_tokens
from .states import State
from .views import ByKeys, Fast, chunks, insert_new

if TYPE_CHECKING:
    from .store import Store


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a call: an admin, a person or driver with a user token, or a job with its token."""

    kind: str  # "admin", "user" or "job"
    name: str  # the owner of the jobs it submits
    job_uuid: str | None = None
    path: str = "/"  # its scope: a job's own subtree; everything ("/") for the others
    run_uuid: str = ""  # a job caller's run, which its token belongs to

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.job_uuid or self.name}"

    def sees(self, path: str, owner: str) -> bool:
        """Whether the job at `path`, owned by `owner`, is within this caller's reach."""
        return self.kind == "admin" or (owner == self.name and path.startswith(self.path))

    def check_scope(self, job_uuid: str, path: str, owner: str) -> None:
        if self.sees(path, owner):
            return
        if self.kind == "job":
            raise PermissionDenied(f"job {job_uuid} is outside the subtree of job {self.job_uuid}", field="uuid")
        raise PermissionDenied(f"job {job_uuid} is not one of {self.name}'s", field="uuid")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# Built once: every call with a token runs them.
JOB_TOKEN = Fast(sa.select(runs.c.state, runs.c.desired, runs.c.uuid, jobs.c.uuid, jobs.c.path, jobs.c.owner,
                           jobs.c.desired)
                 .select_from(runs.join(jobs, jobs.c.uuid == runs.c.origin_job_uuid))
                 .where(runs.c.token_hash == sa.bindparam("digest")))
USER_TOKEN = Fast(sa.select(user_tokens.c.name, user_tokens.c.expires_at)
                  .where(user_tokens.c.token_hash == sa.bindparam("digest")))
_within = sa.bindparam("path").concat("%")
HELD = ByKeys(holdings.c.digest, sa.select(holdings.c.digest).where(holdings.c.owner == sa.bindparam("owner")).where)
HOLDS_WITHIN = Fast(sa.select(holdings.c.digest).where(
    holdings.c.owner == sa.bindparam("owner"), holdings.c.digest == sa.bindparam("digest"),
    holdings.c.path.like(_within)).limit(1))
MADE_WITHIN = Fast(sa.select(runs.c.output).select_from(runs.join(jobs, jobs.c.run_uuid == runs.c.uuid)).where(
    runs.c.output == sa.bindparam("digest"), jobs.c.owner == sa.bindparam("owner"), jobs.c.path.like(_within)).limit(1))
HOLD = insert_new(holdings)


class Tokens:
    def authenticate(self: "Store", token: str, now: float) -> Caller:
        digest = hash_token(token)
        with self.read() as conn:
            rows = JOB_TOKEN.run(conn, {"digest": digest})
            if rows:
                [(state, desired, run_uuid, job_uuid, path, owner, job_desired)] = rows
                if state != State.RUNNING.value or desired != "run":
                    raise Unauthenticated("token expired: its job's run has ended", field="token")
                if job_desired != "run":  # its run goes on for other jobs: the job itself has ended
                    raise Unauthenticated(f"token expired: job {job_uuid} was cancelled", field="token")
                return Caller("job", owner, job_uuid, path, run_uuid)
            found = USER_TOKEN.run(conn, {"digest": digest})
        if not found:
            raise Unauthenticated("token not recognised (wrong, or revoked)", field="token")
        [(name, expires_at)] = found
        if expires_at is not None and expires_at <= now:
            raise Unauthenticated(f"token {name!r} has expired", field="token")
        return Caller("user", name)

    def create_user_token(self: "Store", name: str, now: float, expires_at: float | None = None) -> str:
        token = "jn_" + secrets.token_urlsafe(24)
        with self.write() as tx:
            if tx.conn.execute(sa.select(user_tokens.c.id).where(user_tokens.c.name == name)).first():
                raise Conflict(f"a token named {name!r} exists: a name is one user (revoke it to make a new one)",
                               field="name")
            tx.conn.execute(sa.insert(user_tokens).values(name=name, token_hash=hash_token(token), created_at=now,
                                                          expires_at=expires_at))
        return token

    def user_tokens(self: "Store") -> list[dict[str, Any]]:
        with self.read() as conn:
            return [dict(r) for r in conn.execute(
                sa.select(user_tokens.c.name, user_tokens.c.created_at, user_tokens.c.expires_at)
                .order_by(user_tokens.c.name)).mappings()]

    def revoke_user_token(self: "Store", name: str) -> None:
        """Revoke the token named `name`; the jobs it submitted stay, and so does their owner."""
        with self.write() as tx:
            if not tx.conn.execute(sa.delete(user_tokens).where(user_tokens.c.name == name)).rowcount:
                raise NotFound(f"no token named {name!r}", field="name")

    # -- data ----------------------------------------------------------------------------------

    def hold(self: "Store", caller: Caller, digests: list[str]) -> None:
        """Record that `caller` sent these blobs, programs or manifests: it may name them again."""
        if digests:  # an admin's too: its jobs' tokens are not admins
            with self.write() as tx:
                tx.conn.execute(HOLD[self.engine.dialect.name],
                                [{"owner": caller.name, "digest": d, "path": caller.path} for d in digests])

    def held(self: "Store", caller: Caller, digests: Sequence[str]) -> set[str]:
        """Which of these blobs or programs `caller`'s owner sent itself (an admin: all)."""
        if caller.kind == "admin":
            return set(digests)
        found: set[str] = set()
        with self.read() as conn:
            for chunk in chunks(sorted(set(digests))):
                found.update(HELD.execute(conn, chunk, owner=caller.name).scalars())
        return found

    def may_read(self: "Store", caller: Caller, manifest: str) -> bool:
        """Whether `caller` may read the data `manifest` names: an upload sent within its scope,
        or the output of a run one of its jobs is attached to."""
        if caller.kind == "admin":
            return True
        params = {"owner": caller.name, "digest": manifest, "path": caller.path}
        with self.read() as conn:
            return bool(HOLDS_WITHIN.run(conn, params) or MADE_WITHIN.run(conn, params))
