"""The delivery log: every notification and each attempt to deliver it, in one SQLite file
(state_dir/webhooks.sqlite), self-contained so it can move to another store.

It is also the outbox: a notification is written here first (pending) and delivered from here, so
one not yet delivered when the policy actor stops is sent after its restart. One notification per
approval and event: asking twice returns False.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

_SCHEMA = ["""
CREATE TABLE IF NOT EXISTS deliveries (
  delivery_id TEXT PRIMARY KEY, event TEXT NOT NULL, approval_id TEXT NOT NULL,
  case_id TEXT NOT NULL, url TEXT NOT NULL, body TEXT NOT NULL,
  status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
  last_status_code INTEGER, last_error TEXT, created_at TEXT NOT NULL, finished_at TEXT,
  UNIQUE (approval_id, event)
)""", """
CREATE TABLE IF NOT EXISTS attempts (
  delivery_id TEXT NOT NULL, attempt INTEGER NOT NULL, at TEXT NOT NULL,
  status_code INTEGER, error TEXT, duration_ms REAL NOT NULL, PRIMARY KEY (delivery_id, attempt)
)"""]

Status = Literal["pending", "delivered", "failed"]
_READY = ("d.status='pending' AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.approval_id=d.approval_id "
          "AND e.status='pending' AND e.rowid<d.rowid)")


class Delivery(BaseModel):
    """One notification and where its delivery stands."""

    delivery_id: str
    event: str
    approval_id: str
    case_id: str
    url: str
    body: str = Field(description="The exact JSON body sent (and signed).")
    status: Status
    attempts: int
    next_attempt_at: float = Field(description="Unix time of the next attempt (pending only).")
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


class Attempt(BaseModel):
    delivery_id: str
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryLog:
    """SQLite-backed; safe for the threads of one process."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        self._lock = threading.Lock()

    def add(self, event: str, approval_id: str, case_id: str, url: str, body_of: object,
            now: float) -> Delivery | None:
        """Write a pending notification; None if this approval's `event` was already logged.
        `body_of(delivery_id) -> str` builds the body (it names its own id)."""
        delivery_id = f"whd-{uuid.uuid4().hex[:16]}"
        body = body_of(delivery_id)  # type: ignore[operator]
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO deliveries (delivery_id, event, approval_id, case_id, url, body, "
                "status, next_attempt_at, created_at) VALUES (?,?,?,?,?,?,'pending',?,?)",
                (delivery_id, event, approval_id, case_id, url, body, now, _iso(now)))
        return self.get(delivery_id) if cur.rowcount else None

    def get(self, delivery_id: str) -> Delivery:
        row = self._db.execute("SELECT * FROM deliveries WHERE delivery_id=?", (delivery_id,)).fetchone()
        if row is None:
            raise KeyError(delivery_id)
        return Delivery.model_validate(dict(row))

    def due(self, now: float, limit: int = 50) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, oldest first; one waits while an earlier
        delivery of the same approval is still pending, so a receiver gets each approval's events
        in order."""
        rows = self._db.execute(
            f"SELECT * FROM deliveries d WHERE {_READY} AND next_attempt_at<=? "
            "ORDER BY next_attempt_at LIMIT ?", (now, limit)).fetchall()
        return [Delivery.model_validate(dict(r)) for r in rows]

    def next_due(self) -> float | None:
        """Unix time of the earliest pending attempt, if any."""
        row = self._db.execute(f"SELECT min(next_attempt_at) FROM deliveries d WHERE {_READY}").fetchone()
        return row[0]

    def record(self, delivery_id: str, *, now: float, status_code: int | None, error: str | None,
               duration_ms: float, status: Status, next_attempt_at: float | None = None) -> None:
        """One attempt and the delivery's new state."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                attempt = self._db.execute("SELECT attempts FROM deliveries WHERE delivery_id=?",
                                           (delivery_id,)).fetchone()[0] + 1
                self._db.execute("INSERT INTO attempts VALUES (?,?,?,?,?,?)",
                                 (delivery_id, attempt, _iso(now), status_code, error, duration_ms))
                self._db.execute(
                    "UPDATE deliveries SET attempts=?, status=?, next_attempt_at=?, last_status_code=?, "
                    "last_error=?, finished_at=? WHERE delivery_id=?",
                    (attempt, status, next_attempt_at if next_attempt_at is not None else now,
                     status_code, error, None if status == "pending" else _iso(now), delivery_id))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def list(self, *, approval_id: str | None = None, status: Status | None = None) -> list[Delivery]:
        """Deliveries, oldest first."""
        where, params = [], []
        if approval_id is not None:
            where.append("approval_id=?")
            params.append(approval_id)
        if status is not None:
            where.append("status=?")
            params.append(status)
        sql = "SELECT * FROM deliveries" + (f" WHERE {' AND '.join(where)}" if where else "")
        return [Delivery.model_validate(dict(r)) for r in
                self._db.execute(sql + " ORDER BY created_at, rowid", params).fetchall()]

    def attempts(self, delivery_id: str) -> list[Attempt]:
        rows = self._db.execute("SELECT * FROM attempts WHERE delivery_id=? ORDER BY attempt",
                                (delivery_id,)).fetchall()
        return [Attempt.model_validate(dict(r)) for r in rows]

    def open_approvals(self) -> list[str]:
        """Approvals notified as requested and not yet as decided or expired."""
        rows = self._db.execute(
            "SELECT DISTINCT approval_id FROM deliveries d WHERE event='approval.requested' AND NOT EXISTS "
            "(SELECT 1 FROM deliveries e WHERE e.approval_id=d.approval_id "
            "AND e.event IN ('approval.decided', 'approval.expired'))").fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        self._db.close()


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat()
