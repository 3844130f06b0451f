"""Which controller is active on a store: the one holding its lease.

Two controllers on one store (an SQLite file or a PostgreSQL database, whatever their homes) would
both start the same runs. So a controller serves only while it holds the store's lease, one row
that names its holder, an epoch and when it expires; it renews it every `LEASE / 3` seconds, and
another waits until it lapses (a SIGKILLed leader is replaced within `LEASE` seconds). The epoch
fences: every write transaction first checks, holding the row, that the lease is still its own,
so a leader that was paused and has lost the lease changes nothing. `Store` takes `Leases` as a part.
"""

from typing import TYPE_CHECKING

import sqlalchemy as sa

from jobnest.errors import Unavailable

from .models import leader
from .views import Fast

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from .store import Store

LEASE = 6.0  # seconds


class Leases:
    epoch: int | None = None  # the lease this store's writes are fenced by, once held

    def lead(self: "Store", holder: str, now: float) -> bool:
        """Take the lease if it is free, lapsed or `holder`'s own; True if this store holds it now."""
        with self._write_lock, self._transaction(fenced=False) as tx:
            row = tx.conn.execute(LEADER.with_for_update()).first()
            if row is None:
                tx.conn.execute(sa.insert(leader).values(id=1, holder=holder, epoch=1, expires_at=now + LEASE))
                epoch = 1
            elif row.holder == holder or row.expires_at < now:
                epoch = row.epoch + 1
                tx.conn.execute(sa.update(leader).values(holder=holder, epoch=epoch, expires_at=now + LEASE))
            else:
                return False
        self.epoch = epoch
        return True

    def renew(self: "Store", now: float) -> bool:
        """Extend the lease held; False if another controller has taken it (then writes are refused)."""
        with self._write_lock, self._transaction(fenced=False) as tx:
            renewed = tx.conn.execute(sa.update(leader).where(leader.c.epoch == self.epoch)
                                      .values(expires_at=now + LEASE)).rowcount
        if not renewed:
            self.epoch = -1  # no write passes the fence again
        return bool(renewed)

    def release_lease(self: "Store") -> None:
        """Give the lease up, on a clean stop."""
        with self._write_lock, self._transaction(fenced=False) as tx:
            tx.conn.execute(sa.update(leader).where(leader.c.epoch == self.epoch).values(expires_at=0.0))
        self.epoch = -1

    def check_lease(self: "Store", conn: "Connection") -> None:
        """Within a write transaction: refuse it unless this store still holds the lease."""
        if LEASE_EPOCH.run(conn).scalar() != self.epoch:
            raise Unavailable("another controller is active on this store: this one no longer writes to it")


# The row is held (shared, on PostgreSQL) until the transaction ends: a lease is not taken over in
# the middle of a write. SQLite has one writer at a time anyway.
LEADER = sa.select(leader.c.epoch, leader.c.holder, leader.c.expires_at).where(leader.c.id == 1)
LEASE_EPOCH = Fast(sa.select(leader.c.epoch).where(leader.c.id == 1).with_for_update(read=True))
