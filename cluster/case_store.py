"""Durable cases: every case (its full JSON, submitter, idempotency key) in the state database.

The case book writes a case at every transition its runner makes (a returned write is committed:
it survives a crash of the process or the machine; on PostgreSQL, of the node), so a restarted
case manager finds each open case at its last completed step, and each submission key again.
Lists, counts and key look-ups are SQL on indexed columns (class, submitter, whether an approval
was asked), so the case book need not hold finished cases in memory.

Exactly once, with more than one case manager on one database (an upgrade, a restart on another
node while the old one is cut off): a submission key is the table's primary key, so two managers
taking one key at once store one case (`save_new` answers the other with the winner's case);
and only the holder of the case manager's lease (`hold`) resumes the open cases or writes one.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from pydantic import BaseModel, Field
from sqlalchemy import Connection, func, or_, select, update

from opsagent.agents.case import Case
from opsagent.cluster.case_query import CaseQuery, where
from opsagent.errors import StateBusy, StateError
from opsagent.policy.state import CASE_MANAGER, Lease, State, open_state
from opsagent.policy.state import _lease
from opsagent.policy.state._schema import cases as _cases
from opsagent.policy.state._schema import submission_keys as _keys

log = logging.getLogger(__name__)


class StoredCase(BaseModel):
    """What is persisted of a case: the case and what the API needs around it."""

    case: Case
    submitted_by: str | None = None
    idempotency_key: str | None = None
    cancel_requested_by: str | None = None
    cancel_reason: str | None = Field(None, description="The reason a cancelled case ends with.")

    def columns(self) -> dict[str, object]:
        """The row's columns besides case_id and seq."""
        case = self.case
        return {"status": case.status.value, "final": int(case.status.final), "entry": self.model_dump_json(),
                "exception_type": case.report.exception_type, "submitted_by": self.submitted_by,
                "has_approval": int(any(s.approval_id for s in case.steps))}


class CaseStore:
    """Cases and submission keys in the state database; safe to call from several threads and
    processes. `target`: a `State`, a URL, or an SQLite file path."""

    def __init__(self, target: State | Path | str) -> None:
        self.db = open_state(target)
        self.path = target if not isinstance(target, State) else target.redacted
        self.owner: str | None = None  # the case manager's lease holder, once `hold` took it

    def save(self, stored: StoredCase) -> None:
        """Write (or overwrite) one case; returns once it is committed."""

        def attempt(conn: Connection) -> None:
            self._fence(conn)
            columns = stored.columns()
            done = conn.execute(update(_cases).where(_cases.c.case_id == stored.case.case_id).values(**columns))
            if done.rowcount == 0:
                conn.execute(_cases.insert().values(case_id=stored.case.case_id, seq=_next_seq(self.db, conn),
                                                    **columns))

        self.db.run(attempt)

    def save_new(self, stored: StoredCase, submitter: str | None, key: str | None,
                 digest: str) -> tuple[str, str] | None:
        """Write a new case and, if it came with one, its submission key, in one transaction.

        If another writer (another case manager) stored that key first, nothing is written and its
        (case id, digest) is returned; None when this case was stored."""

        def attempt(conn: Connection) -> tuple[str, str] | None:
            self._fence(conn)
            if key is not None:
                taken = conn.execute(self.db.insert(_keys).values(
                    submitter=submitter or "", key=key, case_id=stored.case.case_id, digest=digest)
                    .on_conflict_do_nothing().returning(_keys.c.case_id)).first()
                if taken is None:
                    row = conn.execute(select(_keys.c.case_id, _keys.c.digest).where(
                        _keys.c.submitter == (submitter or ""), _keys.c.key == key)).one()
                    return row.case_id, row.digest
            conn.execute(_cases.insert().values(case_id=stored.case.case_id, seq=_next_seq(self.db, conn),
                                                **stored.columns()))
            return None

        return self.db.run(attempt)

    def load(self, recent_final: int | None = None) -> list[StoredCase]:
        """Every case, oldest first; with `recent_final`, only the open cases and that many of the
        most recent final ones."""
        query = select(_cases.c.entry).order_by(_cases.c.seq)
        if recent_final is not None:
            recent = select(_cases.c.case_id).where(_cases.c.final == 1).order_by(
                _cases.c.seq.desc()).limit(recent_final)
            query = query.where(or_(_cases.c.final == 0, _cases.c.case_id.in_(recent)))
        return [StoredCase.model_validate_json(entry) for entry in self._scalars(query)]

    def get(self, case_id: str) -> StoredCase | None:
        rows = self._scalars(select(_cases.c.entry).where(_cases.c.case_id == case_id))
        return StoredCase.model_validate_json(rows[0]) if rows else None

    def ping(self) -> None:
        """Return once the database answers a read (StateUnavailable while it is away)."""
        self.db.run(lambda conn: conn.execute(select(1)).scalar_one(), write=False)

    def key(self, submitter: str, key: str) -> tuple[str, str] | None:
        """(case id, report digest) of the submission `submitter` made with `key`, if any."""
        row = self.db.run(lambda conn: conn.execute(select(_keys.c.case_id, _keys.c.digest).where(
            _keys.c.submitter == submitter, _keys.c.key == key)).first(), write=False)
        return None if row is None else (row.case_id, row.digest)

    def page(self, query: CaseQuery) -> tuple[list[StoredCase], int]:
        """The cases matching `query`, newest first, one page of them, and how many match."""
        condition = where(query)

        def both(conn: Connection) -> tuple[list[str], int]:  # one transaction: one snapshot on SQLite
            total = conn.execute(select(func.count()).select_from(_cases).where(condition)).scalar_one()
            entries = conn.execute(select(_cases.c.entry).where(condition).order_by(_cases.c.seq.desc())
                                   .limit(query.limit).offset(query.offset)).scalars().all()
            return list(entries), int(total)

        entries, total = self.db.run(both, write=False)
        return [StoredCase.model_validate_json(e) for e in entries], total

    def with_status(self, status: str | None = None) -> list[Case]:
        """Every case (of that status), oldest first."""
        query = select(_cases.c.entry).order_by(_cases.c.seq)
        if status is not None:
            query = query.where(_cases.c.status == status)
        return [StoredCase.model_validate_json(e).case for e in self._scalars(query)]

    def counts(self) -> dict[str, int]:
        """Cases per status."""
        rows = self.db.run(lambda conn: conn.execute(
            select(_cases.c.status, func.count()).group_by(_cases.c.status)).all(), write=False)
        return {status: int(n) for status, n in rows}

    def classes(self) -> list[str]:
        """The exception classes of the stored cases, sorted."""
        return self._scalars(select(_cases.c.exception_type).distinct().order_by(_cases.c.exception_type))

    def hold(self, owner: str, ttl_s: float, *, wait_s: float) -> None:
        """Become the one case manager of this database as `owner`: take the lease (waiting up to
        `wait_s` for a holder's to lapse; StateBusy naming the holder otherwise), keep renewing it
        every third of `ttl_s`, and from now on refuse to write a case without it (a manager cut
        off long enough for another to take over must not write over that one's cases)."""
        deadline = time.monotonic() + wait_s
        while (lease := self.take_lease(owner, ttl_s)).owner != owner:
            if time.monotonic() >= deadline:
                raise StateBusy(f"case manager {lease.owner} holds the cases of {self.db.redacted} until "
                                f"{time.strftime('%H:%M:%S', time.gmtime(lease.until))} UTC (renewed while it "
                                "runs): stop that system first; one case manager per state database")
            time.sleep(min(1.0, max(0.05, lease.until - time.time())))
        self.owner, self._ttl_s = owner, ttl_s
        self._renewing = threading.Event()
        threading.Thread(target=self._renew, name="case-lease", daemon=True).start()

    def _renew(self) -> None:
        while not self._renewing.wait(self._ttl_s / 3):
            try:
                lease = self.take_lease(self.owner, self._ttl_s)  # type: ignore[arg-type]
            except StateError as exc:  # the database is away: writes fail too; try again
                log.warning("cannot renew the case manager's lease: %s", exc)
                continue
            if lease.owner != self.owner:
                log.error("case manager %s lost its lease to %s: it writes no more cases", self.owner, lease.owner)
                return

    def _fence(self, conn: Connection) -> None:
        """In a write: StateBusy unless this store's owner still holds the lease (if it took one)."""
        if self.owner is not None:
            holder = _lease.held_in(conn, CASE_MANAGER)
            if holder is None or holder.owner != self.owner:
                raise StateBusy(f"case manager {self.owner} no longer holds the cases of {self.db.redacted} "
                                f"({holder.owner if holder else 'nobody'} does): nothing written")

    def take_lease(self, owner: str, ttl_s: float, *, now: float | None = None) -> Lease:
        """Take or renew the case manager's lease for `owner` (see policy/state/_lease.py); the
        lease after: `owner` holds it iff `lease.owner == owner`."""
        return _lease.take(self.db, CASE_MANAGER, owner, ttl_s, now=now)

    def release_lease(self, owner: str) -> bool:
        if owner == self.owner:
            self._renewing.set()
        return _lease.release(self.db, CASE_MANAGER, owner)

    def _scalars(self, query) -> list:  # noqa: ANN001 - a SQLAlchemy select
        return self.db.run(lambda conn: list(conn.execute(query).scalars()), write=False)

    def close(self) -> None:
        """Nothing to release: the state's pool is shared by the process's stores."""


def _next_seq(db: State, conn: Connection) -> int:
    """The next case's place in submission order (under a lock: two managers never share one)."""
    db.lock(conn, "cases-seq")
    return int(conn.execute(select(func.coalesce(func.max(_cases.c.seq), 0))).scalar_one()) + 1
