"""Durable cases: every case (its full JSON, submitter, idempotency key) in one SQLite file.

The case book writes a case at every transition its runner makes (WAL journal, synchronous
FULL: a checkpoint that returned survives a crash of the process or the machine), so a restarted
case manager finds each open case at its last completed step, and each submission key again.
Lists, counts and key look-ups are SQL on indexed columns (class, submitter, whether an approval
was asked), so the case book need not hold finished cases in memory. A file written before those
columns existed is migrated when opened (columns added, filled from each case's JSON).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from opsagent.agents.case import Case
from opsagent.cluster.case_query import CaseQuery, where
from opsagent.errors import CaseStoreError

_TABLES = """
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    final INTEGER NOT NULL,
    entry TEXT NOT NULL,
    exception_type TEXT NOT NULL DEFAULT '',
    submitted_by TEXT,
    has_approval INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS submission_keys (
    submitter TEXT NOT NULL,
    key TEXT NOT NULL,
    case_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (submitter, key)
)"""
# added after the first schema: a file from then gets them with these definitions, then a backfill
_ADDED_COLUMNS = {"exception_type": "TEXT NOT NULL DEFAULT ''", "submitted_by": "TEXT",
                  "has_approval": "INTEGER NOT NULL DEFAULT 0"}
_INDEXES = """
CREATE INDEX IF NOT EXISTS cases_open ON cases (final, seq);
CREATE INDEX IF NOT EXISTS cases_seq ON cases (seq);
CREATE INDEX IF NOT EXISTS cases_status ON cases (status, seq);
CREATE INDEX IF NOT EXISTS cases_class ON cases (exception_type, seq);
CREATE INDEX IF NOT EXISTS cases_submitter ON cases (submitted_by, seq);
CREATE INDEX IF NOT EXISTS cases_approval ON cases (has_approval, seq)"""
_COLUMNS = "case_id, seq, status, final, entry, exception_type, submitted_by, has_approval"


class StoredCase(BaseModel):
    """What is persisted of a case: the case and what the API needs around it."""

    case: Case
    submitted_by: str | None = None
    idempotency_key: str | None = None
    cancel_requested_by: str | None = None
    cancel_reason: str | None = Field(None, description="The reason a cancelled case ends with.")

    def columns(self) -> tuple[str, int, str, str, str | None, int]:
        """status, final, entry JSON, class, submitter, has_approval: the row after its seq."""
        case = self.case
        return (case.status.value, int(case.status.final), self.model_dump_json(),
                case.report.exception_type, self.submitted_by,
                int(any(s.approval_id for s in case.steps)))


class CaseStore:
    """One SQLite file of cases and submission keys; safe to call from several threads. Writes
    go through one connection, reads through another (in WAL mode a read never waits for a
    write's fsync)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                     timeout=30.0)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._seq = self._conn.execute("SELECT coalesce(max(seq), 0) FROM cases").fetchone()[0]
        self._read_lock = threading.Lock()
        self._read = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                     timeout=30.0)

    def _migrate(self) -> None:
        """Create the tables, or bring a file of the first schema up to this one."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _TABLES.split(";"):
                conn.execute(statement)
            present = {row[1] for row in conn.execute("PRAGMA table_info(cases)")}
            missing = [name for name in _ADDED_COLUMNS if name not in present]
            for name in missing:
                conn.execute(f"ALTER TABLE cases ADD COLUMN {name} {_ADDED_COLUMNS[name]}")
            if missing:
                for case_id, entry in conn.execute("SELECT case_id, entry FROM cases").fetchall():
                    try:
                        _, _, _, kind, submitter, asked = StoredCase.model_validate_json(entry).columns()
                    except ValidationError as exc:
                        raise CaseStoreError(f"{self.path}: case {case_id} cannot be read to fill the "
                                             f"new columns (the file is left as it was): {exc}") from exc
                    conn.execute("UPDATE cases SET exception_type = ?, submitted_by = ?, "
                                 "has_approval = ? WHERE case_id = ?", (kind, submitter, asked, case_id))
            for statement in _INDEXES.split(";"):
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def save(self, stored: StoredCase) -> None:
        """Write (or overwrite) one case; returns once it is on disk."""
        case = stored.case
        with self._lock:
            row = self._conn.execute("SELECT seq FROM cases WHERE case_id = ?", (case.case_id,)).fetchone()
            if row is None:
                self._seq += 1
            self._conn.execute(
                f"INSERT INTO cases ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (case_id) "
                "DO UPDATE SET status = excluded.status, final = excluded.final, entry = excluded.entry, "
                "exception_type = excluded.exception_type, submitted_by = excluded.submitted_by, "
                "has_approval = excluded.has_approval",
                (case.case_id, self._seq if row is None else row[0], *stored.columns()))

    def save_new(self, stored: StoredCase, submitter: str | None, key: str | None, digest: str) -> None:
        """Write a new case and, if it came with one, its submission key, in one transaction."""
        with self._lock:
            self._seq += 1
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(f"INSERT INTO cases ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                   (stored.case.case_id, self._seq, *stored.columns()))
                if key is not None:
                    self._conn.execute("INSERT INTO submission_keys VALUES (?, ?, ?, ?)",
                                       (submitter or "", key, stored.case.case_id, digest))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def load(self, recent_final: int | None = None) -> list[StoredCase]:
        """Every case, oldest first; with `recent_final`, only the open cases and that many of the
        most recent final ones."""
        if recent_final is None:
            rows = self._select("SELECT entry FROM cases ORDER BY seq")
        else:
            rows = self._select(
                "SELECT entry FROM cases WHERE final = 0 OR case_id IN (SELECT case_id FROM cases "
                "WHERE final = 1 ORDER BY seq DESC LIMIT ?) ORDER BY seq", (recent_final,))
        return [StoredCase.model_validate_json(r[0]) for r in rows]

    def get(self, case_id: str) -> StoredCase | None:
        rows = self._select("SELECT entry FROM cases WHERE case_id = ?", (case_id,))
        return StoredCase.model_validate_json(rows[0][0]) if rows else None

    def key(self, submitter: str, key: str) -> tuple[str, str] | None:
        """(case id, report digest) of the submission `submitter` made with `key`, if any."""
        rows = self._select("SELECT case_id, digest FROM submission_keys WHERE submitter = ? AND key = ?",
                            (submitter, key))
        return (rows[0][0], rows[0][1]) if rows else None

    def page(self, query: CaseQuery) -> tuple[list[StoredCase], int]:
        """The cases matching `query`, newest first, one page of them, and how many match."""
        condition, params = where(query)
        with self._read_lock:
            self._read.execute("BEGIN")  # both answers from one snapshot
            try:
                total = self._read.execute(f"SELECT count(*) FROM cases WHERE {condition}",
                                           params).fetchone()[0]
                rows = self._read.execute(
                    f"SELECT entry FROM cases WHERE {condition} ORDER BY seq DESC LIMIT ? OFFSET ?",
                    [*params, query.limit, query.offset]).fetchall()
            finally:
                self._read.execute("COMMIT")
        return [StoredCase.model_validate_json(r[0]) for r in rows], total

    def with_status(self, status: str | None = None) -> list[Case]:
        """Every case (of that status), oldest first."""
        rows = (self._select("SELECT entry FROM cases ORDER BY seq") if status is None else
                self._select("SELECT entry FROM cases WHERE status = ? ORDER BY seq", (status,)))
        return [StoredCase.model_validate_json(r[0]).case for r in rows]

    def counts(self) -> dict[str, int]:
        """Cases per status."""
        return dict(self._select("SELECT status, count(*) FROM cases GROUP BY status"))

    def classes(self) -> list[str]:
        """The exception classes of the stored cases, sorted."""
        return [r[0] for r in self._select("SELECT DISTINCT exception_type FROM cases ORDER BY 1")]

    def _select(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._read_lock:
            return self._read.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._conn.close()
            self._read.close()
