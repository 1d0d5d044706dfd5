"""The cluster-wide counters behind spending and rate limits, kept durably in the state database.

One row per action, keyed by `(case_id, step, args_digest)`: recording the same action again (a
retry) finds the row and counts nothing new, so a retried action never counts twice.

Reserve on allow, commit on execute. `reserve` checks every limit and records the action in one
transaction that holds the ledger's lock (SQLite: the write lock of `BEGIN IMMEDIATE`;
PostgreSQL: a transaction-scoped advisory lock), so two policy processes (or replicas on two
nodes, or threads) cannot both take the last of a budget. A reservation holds its amount until `hold_until` (the permit's expiry plus a grace for
a call still in flight); `commit` (the action ran, or may have) keeps it for good, `release` (it
certainly did not run) frees it at once, and one never settled simply lapses. A lapsed or
released action that is reserved again counts once more, and only once.

What counts against a limit:
- spend: committed actions, and reserved ones whose hold has not lapsed; per UTC day by the day
  of the reservation; per entity (the `entity` column, e.g. "invoice_id=INV-1") across cases;
- calls per minute: every action reserved in the last 60 seconds, whatever became of it.

Amounts are stored as integer millionths, so sums and comparisons are exact.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from sqlalchemy import ColumnElement, Connection, and_, case, func, not_, or_, select, update

from opsagent.policy.limits import Limit, LimitExceeded
from opsagent.policy.records import LimitUsage
from opsagent.policy.state import State, open_state
from opsagent.policy.state._schema import ledger as _ledger

_MICRO = 1_000_000
_LOCK = "ledger"  # every reservation and commit serialises on it (PostgreSQL advisory lock)


def _counts(now: float) -> ColumnElement[bool]:
    """Counts against a spend limit: committed, or reserved with its hold not lapsed."""
    return or_(_ledger.c.state == "committed", and_(_ledger.c.state == "reserved", _ledger.c.hold_until > now))


def _is(key: ActionKey) -> ColumnElement[bool]:
    return and_(_ledger.c.case_id == key.case_id, _ledger.c.step == key.step,
                _ledger.c.args_digest == key.args_digest)


class ActionKey(NamedTuple):
    """What makes an action one action: retries of it share this key."""

    case_id: str
    step: int
    args_digest: str


@dataclass(frozen=True)
class LedgerEntry:
    """An action as the ledger counts it."""

    key: ActionKey
    exception_type: str
    tool: str
    amount: float = 0.0
    currency: str | None = None
    entity: str | None = None


def utc_day(now: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(now))


class SpendLedger:
    """Durable, atomic counters for spend and call rates; safe to share across threads and processes.

    `target`: the state database (a `State`, a URL, or an SQLite file path; default in memory)."""

    def __init__(self, target: State | str | Path = ":memory:") -> None:
        self.db = open_state(target)
        self.path = str(target) if not isinstance(target, State) else target.redacted

    def usage(self, entry: LedgerEntry, limits: Sequence[Limit], *, now: float | None = None,
              approved: bool = False) -> list[LimitUsage]:
        """The limits' values with this action counted once; raises LimitExceeded like `reserve`.

        Read only. With `approved`, limits whose on_exceed is require_approval do not raise.
        """
        now = time.time() if now is None else now
        return self.db.run(lambda conn: _evaluate(conn, entry, limits, now, approved), write=False)

    def reserve(self, entry: LedgerEntry, limits: Sequence[Limit], *, hold_until: float,
                now: float | None = None, approved: bool = False) -> list[LimitUsage]:
        """Check the limits and record the action, atomically; raises LimitExceeded, recording nothing.

        An action already counting (a retry) is not counted again; its hold is only extended.
        """
        now = time.time() if now is None else now

        def attempt(conn: Connection) -> list[LimitUsage]:
            self.db.lock(conn, _LOCK)
            row = conn.execute(select(_ledger.c.state, _counts(now).label("counting"))
                               .where(_is(entry.key))).first()
            usages = _evaluate(conn, entry, limits, now, approved)
            if row is not None and row.counting:
                conn.execute(update(_ledger).where(_is(entry.key)).values(hold_until=case(
                    (_ledger.c.hold_until > hold_until, _ledger.c.hold_until), else_=hold_until)))
                return usages
            values = dict(exception_type=entry.exception_type, tool=entry.tool,
                          amount_micro=_micro(entry.amount), currency=entry.currency, day=utc_day(now),
                          at=now, hold_until=hold_until, state="reserved", entity=entry.entity)
            conn.execute(self.db.insert(_ledger).values(**entry.key._asdict(), **values)
                         .on_conflict_do_update(index_elements=list(ActionKey._fields), set_=values))
            return usages

        return self.db.run(attempt)

    def commit(self, key: ActionKey, *, now: float | None = None) -> Literal["committed", "late", "untracked"]:
        """The action ran (or may have): its amount counts for good.

        "late" if its reservation had lapsed or been released (it is recorded anyway: the money
        moved), "untracked" if no limit applied to it and there is nothing to commit.
        """
        now = time.time() if now is None else now

        def attempt(conn: Connection) -> Literal["committed", "late", "untracked"]:
            self.db.lock(conn, _LOCK)
            row = conn.execute(select(_counts(now).label("counting")).where(_is(key))).first()
            if row is None:
                return "untracked"
            conn.execute(update(_ledger).where(_is(key)).values(state="committed"))
            return "committed" if row.counting else "late"

        return self.db.run(attempt)

    def release(self, key: ActionKey) -> bool:
        """The action certainly did not run: free its reservation now. False if none was held."""
        return self.db.run(lambda conn: conn.execute(
            update(_ledger).where(_is(key), _ledger.c.state == "reserved").values(state="released")
        ).rowcount == 1)

    def state(self, key: ActionKey) -> str | None:
        """reserved, committed, released, or None if the action was never recorded."""
        return self.db.run(lambda conn: conn.execute(select(_ledger.c.state).where(_is(key)))
                              .scalar_one_or_none(), write=False)

    def spent(self, *, day: str | None = None, case_id: str | None = None, tool: str | None = None,
              exception_type: str | None = None, now: float | None = None) -> float:
        """Spend counting now, optionally for one UTC day, case, tool or class."""
        now = time.time() if now is None else now
        where = [_counts(now)]
        for column, value in (("day", day), ("case_id", case_id), ("tool", tool),
                              ("exception_type", exception_type)):
            if value is not None:
                where.append(_ledger.c[column] == value)
        total = self.db.run(lambda conn: conn.execute(
            select(func.coalesce(func.sum(_ledger.c.amount_micro), 0)).where(*where)).scalar_one(),
            write=False)
        return int(total) / _MICRO

    def close(self) -> None:
        """Nothing to release: the state's pool is shared by the process's stores."""


def _evaluate(conn: Connection, entry: LedgerEntry, limits: Sequence[Limit], now: float,
              approved: bool) -> list[LimitUsage]:
    """Each limit's value with this action counted exactly once; raise for the first blocking one."""
    usages: list[LimitUsage] = []
    blocking: list[tuple[Limit, LimitUsage]] = []
    own = _micro(entry.amount)
    for limit in limits:
        if limit.kind == "spend":
            total = own + _others(conn, entry, limit, now)
            value, exceeded = total / _MICRO, total > _micro(limit.limit)
        else:
            value = 1 + _others(conn, entry, limit, now)
            exceeded = value > limit.limit
        usage = LimitUsage(what=limit.what, value=value, limit=limit.limit, exceeded=exceeded)
        usages.append(usage)
        if exceeded and (limit.on_exceed == "deny" or not approved):
            blocking.append((limit, usage))
    if blocking:
        blocking.sort(key=lambda pair: pair[0].on_exceed != "deny")  # a deny outranks an approval
        limit, usage = blocking[0]
        raise LimitExceeded(usage.what, usage.value, usage.limit, on_exceed=limit.on_exceed,
                            consulted=usages)
    return usages


def _others(conn: Connection, entry: LedgerEntry, limit: Limit, now: float) -> int:
    """What other actions count against `limit`: spend in millionths, or a number of calls."""
    if limit.window == "action":
        return 0
    where = [not_(_is(entry.key))]
    if limit.entity is not None:
        where.append(_ledger.c.entity == limit.entity)
    if limit.tool is not None:
        where.append(_ledger.c.tool == limit.tool)
    if limit.exception_type is not None:
        where.append(_ledger.c.exception_type == limit.exception_type)
    if limit.window == "case":
        where.append(_ledger.c.case_id == entry.key.case_id)
    elif limit.window == "day":
        where.append(_ledger.c.day == utc_day(now))
    if limit.kind == "spend":
        where.append(_counts(now))
        query = select(func.coalesce(func.sum(_ledger.c.amount_micro), 0))
    else:
        where.append(_ledger.c.at > now - 60)
        query = select(func.count())
    return int(conn.execute(query.select_from(_ledger).where(*where)).scalar_one())


def _micro(amount: float) -> int:
    return round(amount * _MICRO)
