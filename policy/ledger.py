"""The cluster-wide counters behind spending and rate limits, kept durably in one SQLite file.

One row per action, keyed by `(case_id, step, args_digest)`: recording the same action again (a
retry) finds the row and counts nothing new, so a retried action never counts twice.

Reserve on allow, commit on execute. `reserve` checks every limit and records the action in one
`BEGIN IMMEDIATE` transaction, so two policy processes (or threads) cannot both take the last of
a budget. A reservation holds its amount until `hold_until` (the permit's expiry plus a grace for
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

import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from opsagent.policy.limits import Limit, LimitExceeded
from opsagent.policy.records import LimitUsage

_MICRO = 1_000_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
  case_id TEXT NOT NULL, step INTEGER NOT NULL, args_digest TEXT NOT NULL,
  exception_type TEXT NOT NULL, tool TEXT NOT NULL,
  amount_micro INTEGER NOT NULL, currency TEXT,
  day TEXT NOT NULL,            -- UTC date of the reservation
  at REAL NOT NULL,             -- unix time of the reservation
  hold_until REAL NOT NULL,     -- an uncommitted reservation lapses then
  state TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
  entity TEXT,                  -- the business entity spent on, e.g. invoice_id=INV-1
  PRIMARY KEY (case_id, step, args_digest)
);
CREATE INDEX IF NOT EXISTS ledger_day ON ledger (day, tool, exception_type);
CREATE INDEX IF NOT EXISTS ledger_at ON ledger (at);
"""
_COUNTS = "(state = 'committed' OR (state = 'reserved' AND hold_until > :now))"
_NOT_SELF = "NOT (case_id = :case_id AND step = :step AND args_digest = :args_digest)"


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
    """Durable, atomic counters for spend and call rates; safe to share across threads."""

    def __init__(self, path: str | Path = ":memory:", *, timeout_s: float = 10.0) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        if self.path != ":memory:":
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        if "entity" not in {row[1] for row in self._conn.execute("PRAGMA table_info(ledger)")}:
            self._conn.execute("ALTER TABLE ledger ADD COLUMN entity TEXT")  # a file from before entities
        self._conn.execute("CREATE INDEX IF NOT EXISTS ledger_entity ON ledger (entity, tool)")

    def usage(self, entry: LedgerEntry, limits: Sequence[Limit], *, now: float | None = None,
              approved: bool = False) -> list[LimitUsage]:
        """The limits' values with this action counted once; raises LimitExceeded like `reserve`.

        Read only. With `approved`, limits whose on_exceed is require_approval do not raise.
        """
        now = time.time() if now is None else now
        with self._lock:
            return _evaluate(self._conn, entry, limits, now, approved)

    def reserve(self, entry: LedgerEntry, limits: Sequence[Limit], *, hold_until: float,
                now: float | None = None, approved: bool = False) -> list[LimitUsage]:
        """Check the limits and record the action, atomically; raises LimitExceeded, recording nothing.

        An action already counting (a retry) is not counted again; its hold is only extended.
        """
        now = time.time() if now is None else now
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(
                    f"SELECT state, {_COUNTS} AS counting FROM ledger WHERE case_id = :case_id "
                    "AND step = :step AND args_digest = :args_digest", {**entry.key._asdict(), "now": now},
                ).fetchone()
                usages = _evaluate(self._conn, entry, limits, now, approved)
                if row is not None and row["counting"]:
                    self._conn.execute(
                        "UPDATE ledger SET hold_until = max(hold_until, ?) WHERE case_id = ? AND step = ? "
                        "AND args_digest = ?", (hold_until, *entry.key),
                    )
                else:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO ledger (case_id, step, args_digest, exception_type, tool, "
                        "amount_micro, currency, day, at, hold_until, state, entity) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'reserved', ?)",
                        (*entry.key, entry.exception_type, entry.tool, _micro(entry.amount), entry.currency,
                         utc_day(now), now, hold_until, entry.entity),
                    )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return usages

    def commit(self, key: ActionKey, *, now: float | None = None) -> Literal["committed", "late", "untracked"]:
        """The action ran (or may have): its amount counts for good.

        "late" if its reservation had lapsed or been released (it is recorded anyway: the money
        moved), "untracked" if no limit applied to it and there is nothing to commit.
        """
        now = time.time() if now is None else now
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                row = self._conn.execute(
                    f"SELECT {_COUNTS} AS counting FROM ledger WHERE case_id = :case_id AND step = :step "
                    "AND args_digest = :args_digest", {**key._asdict(), "now": now},
                ).fetchone()
                if row is not None:
                    self._conn.execute(
                        "UPDATE ledger SET state = 'committed' "
                        "WHERE case_id = ? AND step = ? AND args_digest = ?", tuple(key),
                    )
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        if row is None:
            return "untracked"
        return "committed" if row["counting"] else "late"

    def release(self, key: ActionKey) -> bool:
        """The action certainly did not run: free its reservation now. False if none was held."""
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE ledger SET state = 'released' WHERE case_id = ? AND step = ? AND args_digest = ? "
                "AND state = 'reserved'", tuple(key),
            )
        return cursor.rowcount == 1

    def state(self, key: ActionKey) -> str | None:
        """reserved, committed, released, or None if the action was never recorded."""
        with self._lock:
            row = self._conn.execute(
                "SELECT state FROM ledger WHERE case_id = ? AND step = ? AND args_digest = ?", tuple(key)
            ).fetchone()
        return None if row is None else row["state"]

    def spent(self, *, day: str | None = None, case_id: str | None = None, tool: str | None = None,
              exception_type: str | None = None, now: float | None = None) -> float:
        """Spend counting now, optionally for one UTC day, case, tool or class."""
        now = time.time() if now is None else now
        where, params = [_COUNTS], {"now": now}
        for column, value in (("day", day), ("case_id", case_id), ("tool", tool),
                              ("exception_type", exception_type)):
            if value is not None:
                where.append(f"{column} = :{column}")
                params[column] = value
        with self._lock:
            total = self._conn.execute(
                f"SELECT coalesce(sum(amount_micro), 0) FROM ledger WHERE {' AND '.join(where)}", params
            ).fetchone()[0]
        return total / _MICRO

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _evaluate(conn: sqlite3.Connection, entry: LedgerEntry, limits: Sequence[Limit], now: float,
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


def _others(conn: sqlite3.Connection, entry: LedgerEntry, limit: Limit, now: float) -> int:
    """What other actions count against `limit`: spend in millionths, or a number of calls."""
    if limit.window == "action":
        return 0
    params: dict[str, object] = {**entry.key._asdict(), "now": now, "tool": limit.tool,
                                 "exception_type": limit.exception_type, "entity": limit.entity}
    where = [_NOT_SELF]
    if limit.entity is not None:
        where.append("entity = :entity")
    if limit.tool is not None:
        where.append("tool = :tool")
    if limit.exception_type is not None:
        where.append("exception_type = :exception_type")
    if limit.window == "case":
        where.append("case_id = :case_id")
    elif limit.window == "day":
        where.append("day = :day")
        params["day"] = utc_day(now)
    if limit.kind == "spend":
        where.append(_COUNTS)
        select = "coalesce(sum(amount_micro), 0)"
    else:
        where.append("at > :now - 60")
        select = "count(*)"
    return conn.execute(f"SELECT {select} FROM ledger WHERE {' AND '.join(where)}", params).fetchone()[0]


def _micro(amount: float) -> int:
    return round(amount * _MICRO)
