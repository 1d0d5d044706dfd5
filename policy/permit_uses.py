"""One-time permits: the executors' durable record of every permit they have used.

Before a write goes out, its executor records the permit's nonce with the call's idempotency key
(`claim`, one SQLite transaction, fsynced). A second use of a nonce is refused unless it retries
the same call under the same idempotency key: the system of record then answers the first
result instead of applying it again. A write with no idempotency key is sent at most once per
action (case, step, arguments), whatever permit comes with it: a re-sent one might apply twice.

Executors of one machine share the file (`state_dir/permit_uses.sqlite`); the default is in
memory, for one executor in a test.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

from opsagent.errors import PermitError
from opsagent.policy.records import Permit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS permit_uses (
  nonce TEXT PRIMARY KEY, case_id TEXT NOT NULL, step INTEGER NOT NULL, args_digest TEXT NOT NULL,
  tool TEXT NOT NULL, idempotency_key TEXT, used_at REAL NOT NULL, expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS permit_uses_action ON permit_uses (case_id, step, args_digest);
"""
_KEEP_S = 7 * 86400  # rows of idempotent calls are dropped this long after their permit expired


class PermitUses:
    """Durable nonce record, safe for the threads of one process and for processes sharing the file."""

    def __init__(self, path: str | Path = ":memory:", *, timeout_s: float = 10.0) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                   check_same_thread=False)
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._claims = 0

    def claim(self, permit: Permit, idempotency_key: str | None,
              now: float | None = None) -> Literal["first", "retry"]:
        """Record this use of `permit` before the call; PermitError if it may not be used again."""
        now = time.time() if now is None else now
        action = (permit.case_id, permit.step, permit.args_digest)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT idempotency_key FROM permit_uses WHERE nonce = ?",
                                       (permit.nonce,)).fetchone()
                if row is not None:
                    if idempotency_key is None or row[0] != idempotency_key:
                        raise PermitError(f"permit {permit.nonce[:8]} was already used"
                                          + ("" if idempotency_key is None else
                                             " for a call under another idempotency key"))
                    self._db.execute("COMMIT")
                    return "retry"
                if idempotency_key is None and self._db.execute(
                        "SELECT 1 FROM permit_uses WHERE case_id = ? AND step = ? AND args_digest = ?",
                        action).fetchone() is not None:
                    raise PermitError(f"{permit.tool} (case {permit.case_id}, step {permit.step}) was "
                                      "already sent once and has no idempotency key: it is not sent again")
                self._db.execute("INSERT INTO permit_uses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (permit.nonce, *action, permit.tool, idempotency_key, now, permit.expires_at))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._claims += 1
            if self._claims % 1000 == 0:
                self._db.execute("DELETE FROM permit_uses WHERE idempotency_key IS NOT NULL AND expires_at < ?",
                                 (now - _KEEP_S,))
        return "first"

    def uses(self, nonce: str) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM permit_uses WHERE nonce = ?", (nonce,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
