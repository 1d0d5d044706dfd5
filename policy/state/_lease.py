"""Leases: one named role (the case manager) held by one live process at a time, with a deadline.

A holder renews its lease before it lapses; another process may take it only once it has lapsed
(its holder died or was cut off). Taking reads the lease row `FOR UPDATE` (PostgreSQL; SQLite's
write transaction) so two processes taking at once see each other: exactly one gets it. A lease
held and not lapsed is also how `opsagent state migrate` knows a system is running on a database.
"""

from __future__ import annotations

import time

from pydantic import BaseModel
from sqlalchemy import Connection, select, update

from opsagent.policy.state._engine import State
from opsagent.policy.state._schema import leases

CASE_MANAGER = "case-manager"


class Lease(BaseModel):
    name: str
    owner: str | None
    until: float

    def live(self, now: float | None = None) -> bool:
        return self.owner is not None and self.until > (time.time() if now is None else now)


def _row(conn: Connection, name: str, *, for_update: bool = True) -> Lease:
    query = select(leases.c.owner, leases.c.until).where(leases.c.name == name)
    row = conn.execute(query.with_for_update() if for_update else query).one()
    return Lease(name=name, owner=row.owner, until=row.until)


def take(state: State, name: str, owner: str, ttl_s: float, *, now: float | None = None) -> Lease:
    """Take (or renew) lease `name` for `owner` if it is free, lapsed or already `owner`'s.
    Returns the lease as it is after: `owner` holds it iff `lease.owner == owner`."""

    def attempt(conn: Connection) -> Lease:
        at = time.time() if now is None else now
        conn.execute(state.insert(leases).values(name=name, owner=None, until=0).on_conflict_do_nothing())
        current = _row(conn, name)
        if current.owner not in (None, owner) and current.until > at:
            return current
        conn.execute(update(leases).where(leases.c.name == name).values(
            owner=owner, until=at + ttl_s, taken_at=at))
        return Lease(name=name, owner=owner, until=at + ttl_s)

    return state.run(attempt)


def release(state: State, name: str, owner: str) -> bool:
    """Give the lease up now (a clean stop); False if `owner` did not hold it."""

    def attempt(conn: Connection) -> bool:
        done = conn.execute(update(leases).where(leases.c.name == name, leases.c.owner == owner)
                            .values(owner=None, until=0))
        return done.rowcount == 1

    return state.run(attempt)


def held(state: State, name: str) -> Lease | None:
    """The lease as stored (None if nobody ever took it)."""
    with state.read() as conn:
        row = conn.execute(select(leases.c.owner, leases.c.until).where(leases.c.name == name)).first()
    return None if row is None else Lease(name=name, owner=row.owner, until=row.until)


def held_in(conn: Connection, name: str) -> Lease | None:
    """The lease as stored, read inside the caller's transaction."""
    row = conn.execute(select(leases.c.owner, leases.c.until).where(leases.c.name == name)).first()
    return None if row is None else Lease(name=name, owner=row.owner, until=row.until)
