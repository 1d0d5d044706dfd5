"""Durable cases: every case (its full JSON, submitter, idempotency key) in one SQLite file.

The case book writes a case at every transition its runner makes (WAL journal, synchronous
FULL: a checkpoint that returned survives a crash of the process or the machine), so a restarted
case manager finds each open case at its last completed step, and each submission key again.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from pydantic import BaseModel, Field

from opsagent.agents.case import Case

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    final INTEGER NOT NULL,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS submission_keys (
    submitter TEXT NOT NULL,
    key TEXT NOT NULL,
    case_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (submitter, key)
);
CREATE INDEX IF NOT EXISTS cases_open ON cases (final, seq);
"""


class StoredCase(BaseModel):
    """What is persisted of a case: the case and what the API needs around it."""

    case: Case
    submitted_by: str | None = None
    idempotency_key: str | None = None
    cancel_requested_by: str | None = None
    cancel_reason: str | None = Field(None, description="The reason a cancelled case ends with.")


class CaseStore:
    """One SQLite file of cases and submission keys; safe to call from several threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                     timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._seq = self._conn.execute("SELECT coalesce(max(seq), 0) FROM cases").fetchone()[0]

    def save(self, stored: StoredCase) -> None:
        """Write (or overwrite) one case; returns once it is on disk."""
        case = stored.case
        with self._lock:
            row = self._conn.execute("SELECT seq FROM cases WHERE case_id = ?", (case.case_id,)).fetchone()
            if row is None:
                self._seq += 1
            self._conn.execute(
                "INSERT INTO cases VALUES (?, ?, ?, ?, ?) ON CONFLICT (case_id) DO UPDATE SET "
                "status = excluded.status, final = excluded.final, entry = excluded.entry",
                (case.case_id, self._seq if row is None else row[0], case.status.value,
                 int(case.status.final), stored.model_dump_json()))

    def save_new(self, stored: StoredCase, submitter: str | None, key: str | None, digest: str) -> None:
        """Write a new case and, if it came with one, its submission key, in one transaction."""
        with self._lock:
            self._seq += 1
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute("INSERT INTO cases VALUES (?, ?, ?, ?, ?)",
                                   (stored.case.case_id, self._seq, stored.case.status.value,
                                    int(stored.case.status.final), stored.model_dump_json()))
                if key is not None:
                    self._conn.execute("INSERT INTO submission_keys VALUES (?, ?, ?, ?)",
                                       (submitter or "", key, stored.case.case_id, digest))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def load(self) -> list[StoredCase]:
        """Every case, oldest first."""
        with self._lock:
            rows = self._conn.execute("SELECT entry FROM cases ORDER BY seq").fetchall()
        return [StoredCase.model_validate_json(r[0]) for r in rows]

    def keys(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(submitter, key) -> (case id, report digest) of every keyed submission."""
        with self._lock:
            rows = self._conn.execute("SELECT submitter, key, case_id, digest FROM submission_keys").fetchall()
        return {(s, k): (c, d) for s, k, c, d in rows}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
