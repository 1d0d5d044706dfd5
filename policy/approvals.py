"""Human approval of held actions, stored durably and bound to exactly the previewed action.

A request is keyed by its action (case, step, arguments digest): asking twice returns the same
request. A decision needs an approver identity from authentication (never an agent), a pending
request that has not expired, and the digest of the action the approver was shown: if anything
about the action changed, the digest differs and a new approval is needed.

Separation of duties: the approver may not be anyone who submitted the case's exception (the
submitter the case manager reports with the request, and every one the front door recorded with
a verified credential, `record_submitter`), unless the class's policy turns it off. The check is
by name, so an admin token of the submitter does not bypass it.

Nothing is left pending that nothing will run: a new request for a case's step supersedes any
other pending request of that step (a case manager that died before recording the first one
re-planned the step), and when a case ends its pending requests are withdrawn. Both end as
`expired` with the reason ("superseded by apr-...", "withdrawn: ...").
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from opsagent.errors import ApprovalError
from opsagent.policy.identity import Identity, Role, require

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
  approval_id TEXT PRIMARY KEY, case_id TEXT NOT NULL, exception_type TEXT NOT NULL,
  step INTEGER NOT NULL, tool TEXT NOT NULL, args TEXT NOT NULL, args_digest TEXT NOT NULL,
  risk TEXT, reasons TEXT NOT NULL, policy_version TEXT NOT NULL, preview TEXT,
  status TEXT NOT NULL, requested_at TEXT NOT NULL, expires_at TEXT NOT NULL,
  decided_at TEXT, approver TEXT, reason TEXT, supersedes TEXT NOT NULL DEFAULT '[]',
  UNIQUE (case_id, step, args_digest)
)"""
_SUBMITTERS = """
CREATE TABLE IF NOT EXISTS submitters (
  case_id TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (case_id, name)
)"""
_COLUMNS = ("approval_id, case_id, exception_type, step, tool, args, args_digest, risk, reasons, "
            "policy_version, preview, status, requested_at, expires_at, supersedes")


class ApprovalStatus(StrEnum):
    pending = "pending"
    approved = "approved"
    rejected = "rejected"
    expired = "expired"


class ApprovalRequest(BaseModel):
    """One held action and, once decided, who decided what and why."""

    approval_id: str
    case_id: str
    exception_type: str
    step: int
    tool: str
    args: dict[str, Any]
    args_digest: str
    risk: str | None
    reasons: list[str]
    policy_version: str
    preview: Any = None  # the system's dry-run diff the approver is shown
    status: ApprovalStatus
    requested_at: datetime
    expires_at: datetime
    decided_at: datetime | None = None
    approver: str | None = None
    reason: str | None = None
    supersedes: list[str] = Field(
        default_factory=list, description="Pending requests of the same case and step this one replaced.")


class ApprovalStore:
    """SQLite-backed approvals; safe for the threads of one process (the policy actor)."""

    def __init__(self, path: Path | str, *, ttl: timedelta = timedelta(hours=24)) -> None:
        self.path = Path(path)
        self.ttl = ttl
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._db.execute(_SUBMITTERS)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(approvals)")}
        if "supersedes" not in columns:  # a file from before superseding
            self._db.execute("ALTER TABLE approvals ADD COLUMN supersedes TEXT NOT NULL DEFAULT '[]'")
        self._lock = threading.Lock()

    def request(self, *, case_id: str, exception_type: str, step: int, tool: str,
                args: dict[str, Any], args_digest: str, risk: str | None, reasons: list[str],
                policy_version: str, preview: Any, now: datetime | None = None,
                submitted_by: str | None = None) -> ApprovalRequest:
        """Store a pending request for this exact action, or return the one already stored. A new
        request supersedes the other pending requests of the same case and step (expired, with
        the reason "superseded by <its id>"), so only the action the case will run can be approved.
        `submitted_by`: the case's submitter, who may not approve it."""
        now = now or datetime.now(UTC)
        if submitted_by:
            self.record_submitter(case_id, submitted_by)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT * FROM approvals WHERE case_id=? AND step=? AND args_digest=?",
                    (case_id, step, args_digest)).fetchone()
                if row is not None:
                    self._db.execute("COMMIT")
                    return self._record(row)
                approval_id = f"apr-{uuid.uuid4().hex[:12]}"
                replaced = [r[0] for r in self._db.execute(
                    "SELECT approval_id FROM approvals WHERE case_id=? AND step=? AND status='pending' "
                    "ORDER BY requested_at", (case_id, step))]
                for old in replaced:
                    self._set(old, ApprovalStatus.expired, now, None, f"superseded by {approval_id}")
                self._db.execute(
                    f"INSERT INTO approvals ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (approval_id, case_id, exception_type, step, tool, json.dumps(args), args_digest,
                     risk, json.dumps(reasons), policy_version, json.dumps(preview, default=str),
                     ApprovalStatus.pending, now.isoformat(), (now + self.ttl).isoformat(),
                     json.dumps(replaced)))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return self.get(approval_id)

    def withdraw(self, case_id: str, reason: str, now: datetime | None = None) -> list[ApprovalRequest]:
        """Expire the case's pending requests with `reason` (its case ended: nothing will run
        them); returns them as withdrawn."""
        now = now or datetime.now(UTC)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = [r[0] for r in self._db.execute(
                    "SELECT approval_id FROM approvals WHERE case_id=? AND status='pending' "
                    "ORDER BY requested_at", (case_id,))]
                for approval_id in ids:
                    self._set(approval_id, ApprovalStatus.expired, now, None, reason)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return [self.get(approval_id) for approval_id in ids]

    def record_submitter(self, case_id: str, name: str) -> None:
        """`name` submitted case `case_id`'s exception: it may never approve that case's actions."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO submitters VALUES (?, ?)", (case_id, name))

    def submitters(self, case_id: str) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT name FROM submitters WHERE case_id=?", (case_id,))}

    def get(self, approval_id: str) -> ApprovalRequest:
        row = self._db.execute("SELECT * FROM approvals WHERE approval_id=?", (approval_id,)).fetchone()
        if row is None:
            raise ApprovalError(f"no approval {approval_id!r}")
        return self._record(row)

    def list(self, status: ApprovalStatus | str | None = None, now: datetime | None = None) -> list[ApprovalRequest]:
        """Requests, oldest first; pending ones past their expiry are reported (and stored) expired."""
        self.expire(now)
        query, params = "SELECT * FROM approvals", ()
        if status is not None:
            query, params = query + " WHERE status=?", (str(status),)
        return [self._record(r) for r in self._db.execute(query + " ORDER BY requested_at", params)]

    def expire(self, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        with self._lock:
            cur = self._db.execute(
                "UPDATE approvals SET status='expired', decided_at=?, reason='expired before a decision' "
                "WHERE status='pending' AND expires_at<?",
                (now.isoformat(), now.isoformat()))
        return cur.rowcount

    def decide(self, approval_id: str, *, identity: Identity, approve: bool, args_digest: str,
               reason: str | None = None, now: datetime | None = None,
               separation_of_duties: bool = True) -> ApprovalRequest:
        """Approve or reject a pending request as `identity`, for the action digest it was shown;
        with `separation_of_duties`, never as one of the case's submitters."""
        now = now or datetime.now(UTC)
        if identity.kind != "human":
            raise ApprovalError(f"{identity.name} is an agent identity and can never approve")
        require(identity, Role.approver)
        if not approve and not (reason and reason.strip()):
            raise ApprovalError("a rejection needs a reason (the planner is told it)")
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                current = self.get(approval_id)
                if current.status != ApprovalStatus.pending:
                    why = f" ({current.reason})" if current.reason else ""
                    raise ApprovalError(f"{approval_id} is already {current.status.value}{why}")
                if now > current.expires_at:
                    self._set(approval_id, ApprovalStatus.expired, now, None, "expired before a decision")
                    self._db.execute("COMMIT")
                    raise ApprovalError(f"{approval_id} expired at {current.expires_at.isoformat()}")
                if separation_of_duties and identity.name in self.submitters(current.case_id):
                    raise ApprovalError(f"{identity.name} submitted case {current.case_id} and may not "
                                        f"decide its actions (separation of duties); another approver must")
                if args_digest != current.args_digest:
                    raise ApprovalError(
                        f"{approval_id}: the action differs from the one previewed "
                        f"(digest {args_digest[:12]} vs {current.args_digest[:12]}); it needs a new approval")
                status = ApprovalStatus.approved if approve else ApprovalStatus.rejected
                self._set(approval_id, status, now, identity.name, reason)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return self.get(approval_id)

    def approved(self, case_id: str, step: int, args_digest: str) -> ApprovalRequest | None:
        """The approved request for exactly this action, if there is one."""
        row = self._db.execute(
            "SELECT * FROM approvals WHERE case_id=? AND step=? AND args_digest=? AND status='approved'",
            (case_id, step, args_digest)).fetchone()
        return None if row is None else self._record(row)

    def _set(self, approval_id: str, status: ApprovalStatus, now: datetime, approver: str | None,
             reason: str | None) -> None:
        self._db.execute(
            "UPDATE approvals SET status=?, decided_at=?, approver=?, reason=? WHERE approval_id=?",
            (status, now.isoformat(), approver, reason, approval_id))

    def _record(self, row: tuple) -> ApprovalRequest:
        names = [d[0] for d in self._db.execute("SELECT * FROM approvals LIMIT 0").description]
        data = dict(zip(names, row, strict=True))
        for key in ("args", "reasons", "preview", "supersedes"):
            data[key] = json.loads(data[key]) if data[key] is not None else None
        return ApprovalRequest.model_validate(data)

    def close(self) -> None:
        self._db.close()
