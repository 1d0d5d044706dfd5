"""One-time permits: the executors' durable record of every permit they have used.

Before a write goes out, its executor records the permit's nonce with the call's idempotency key
(`claim`, one transaction of the state database, durable when it returns). A second use of a nonce is refused unless it retries
the same call under the same idempotency key: the system of record then answers the first
result instead of applying it again. A write with no idempotency key is sent at most once per
action (case, step, arguments), whatever permit comes with it: a re-sent one might apply twice.

Executors share the system's state database (on a cluster, PostgreSQL: executors on every node);
the default is in memory, for one executor in a test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from sqlalchemy import Connection, delete, func, select

from opsagent.errors import PermitError
from opsagent.policy.records import Permit
from opsagent.policy.state import State, open_state
from opsagent.policy.state._schema import permit_uses as _uses

_KEEP_S = 7 * 86400  # rows of idempotent calls are dropped this long after their permit expired


class PermitUses:
    """Durable nonce record, safe for threads and for processes sharing the state database: a
    claim is one transaction holding the permit lock (SQLite's write lock; a PostgreSQL advisory
    lock), and the nonce is the table's primary key.

    `target`: the state database (a `State`, a URL, or an SQLite file path; default in memory)."""

    def __init__(self, target: State | str | Path = ":memory:") -> None:
        self.db = open_state(target)
        self.path = str(target) if not isinstance(target, State) else target.redacted
        self._claims = 0

    def claim(self, permit: Permit, idempotency_key: str | None,
              now: float | None = None) -> Literal["first", "retry"]:
        """Record this use of `permit` before the call; PermitError if it may not be used again."""
        now = time.time() if now is None else now

        def attempt(conn: Connection) -> Literal["first", "retry"]:
            self.db.lock(conn, f"permit:{permit.case_id}:{permit.step}")
            seen = conn.execute(select(_uses.c.idempotency_key).where(_uses.c.nonce == permit.nonce)).first()
            if seen is not None:
                if idempotency_key is None or seen[0] != idempotency_key:
                    raise PermitError(f"permit {permit.nonce[:8]} was already used"
                                      + ("" if idempotency_key is None else
                                         " for a call under another idempotency key"))
                return "retry"
            if idempotency_key is None and conn.execute(select(_uses.c.nonce).where(
                    _uses.c.case_id == permit.case_id, _uses.c.step == permit.step,
                    _uses.c.args_digest == permit.args_digest)).first() is not None:
                raise PermitError(f"{permit.tool} (case {permit.case_id}, step {permit.step}) was "
                                  "already sent once and has no idempotency key: it is not sent again")
            conn.execute(_uses.insert().values(
                nonce=permit.nonce, case_id=permit.case_id, step=permit.step, args_digest=permit.args_digest,
                tool=permit.tool, idempotency_key=idempotency_key, used_at=now, expires_at=permit.expires_at))
            return "first"

        outcome = self.db.run(attempt)
        if outcome == "first":
            self._claims += 1
            if self._claims % 1000 == 0:
                self.db.run(lambda conn: conn.execute(delete(_uses).where(
                    _uses.c.idempotency_key.is_not(None), _uses.c.expires_at < now - _KEEP_S)))
        return outcome

    def uses(self, nonce: str) -> int:
        return self.db.run(lambda conn: conn.execute(
            select(func.count()).select_from(_uses).where(_uses.c.nonce == nonce)).scalar_one(), write=False)

    def close(self) -> None:
        """Nothing to release: the state's pool is shared by the process's stores."""
