"""The policy's durable log of refused calls: who tried what, and why it was refused.

A refused approval, autonomy change or reload changes nothing but this log (SQLite next to the
approvals), so an attempt from inside the cluster leaves a record an auditor can read
(`PolicyActor.refusals`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS refusals (
  at TEXT NOT NULL, operation TEXT NOT NULL, target TEXT NOT NULL, caller TEXT NOT NULL,
  reason TEXT NOT NULL
)"""


class Refusal(BaseModel, frozen=True):
    """One refused call to the policy."""

    at: datetime = Field(description="When it was refused (UTC).")
    operation: str = Field(description="decide_approval, set_mode, reload or record_submission.")
    target: str = Field(description="What it was about: an approval id, a class, a policy version.")
    caller: str = Field(description="The authenticated name, or `unauthenticated`.")
    reason: str = Field(description="Why it was refused.")


class RefusalLog:
    """Append-only; safe for the threads of one process."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute(_SCHEMA)

    def record(self, operation: str, target: str, caller: str, reason: str) -> Refusal:
        refusal = Refusal(at=datetime.now(UTC), operation=operation, target=target[:200], caller=caller[:200],
                          reason=reason[:500])
        with self._lock:
            self._db.execute("INSERT INTO refusals VALUES (?, ?, ?, ?, ?)",
                             (refusal.at.isoformat(), operation, refusal.target, refusal.caller, refusal.reason))
        log.warning("policy refused %s on %s by %s: %s", operation, refusal.target, caller, refusal.reason)
        return refusal

    def list(self, limit: int = 1000) -> list[Refusal]:
        with self._lock:
            rows = self._db.execute("SELECT at, operation, target, caller, reason FROM refusals "
                                    "ORDER BY rowid DESC LIMIT ?", (limit,)).fetchall()
        return [Refusal(at=datetime.fromisoformat(r[0]), operation=r[1], target=r[2], caller=r[3], reason=r[4])
                for r in reversed(rows)]
