"""Human approval of held actions, stored durably (the state database) and bound to exactly the previewed action.

A request is keyed by its action (case, step, arguments digest): asking twice returns the same
request. A decision needs an approver identity from authentication (never an agent), a pending
request that has not expired, and the digest of the action the approver was shown: if anything
about the action changed, the digest differs and a new approval is needed. A decision is
idempotent for its approver: the same decision sent again (its answer was lost) is answered with
the one recorded; any other decision of a decided request is refused.

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
import uuid
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Row, select, update

from opsagent.errors import ApprovalError
from opsagent.policy.identity import Identity, Role, require
from opsagent.policy.state import State, open_state
from opsagent.policy.state._schema import approvals as _approvals
from opsagent.policy.state._schema import submitters as _submitters


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
    """Approvals in the state database; safe for threads, and for processes sharing the database
    (policy replicas): a request or a decision is one transaction, and a decision reads its
    request `FOR UPDATE`, so of two concurrent decisions on one request exactly one is recorded
    (the same approver's identical retry is answered with it, see `decide`).

    `target`: the state database (a `State`, a URL, or an SQLite file path)."""

    def __init__(self, target: State | Path | str, *, ttl: timedelta = timedelta(hours=24)) -> None:
        self.db = open_state(target)
        self.path = target if not isinstance(target, State) else target.redacted
        self.ttl = ttl

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

        def attempt(conn: Connection) -> ApprovalRequest:
            self.db.lock(conn, f"approvals:{case_id}")
            row = conn.execute(select(_approvals).where(
                _approvals.c.case_id == case_id, _approvals.c.step == step,
                _approvals.c.args_digest == args_digest)).first()
            if row is not None:
                return _record(row)
            approval_id = f"apr-{uuid.uuid4().hex[:12]}"
            replaced = list(conn.execute(select(_approvals.c.approval_id).where(
                _approvals.c.case_id == case_id, _approvals.c.step == step,
                _approvals.c.status == ApprovalStatus.pending).order_by(_approvals.c.requested_at)).scalars())
            for old in replaced:
                _set(conn, old, ApprovalStatus.expired, now, None, f"superseded by {approval_id}")
            conn.execute(_approvals.insert().values(
                approval_id=approval_id, case_id=case_id, exception_type=exception_type, step=step,
                tool=tool, args=json.dumps(args), args_digest=args_digest, risk=risk,
                reasons=json.dumps(reasons), policy_version=policy_version,
                preview=json.dumps(preview, default=str), status=ApprovalStatus.pending.value,
                requested_at=now.isoformat(), expires_at=(now + self.ttl).isoformat(),
                supersedes=json.dumps(replaced)))
            return _record(conn.execute(select(_approvals).where(_approvals.c.approval_id == approval_id)).one())

        return self.db.run(attempt)

    def withdraw(self, case_id: str, reason: str, now: datetime | None = None) -> list[ApprovalRequest]:
        """Expire the case's pending requests with `reason` (its case ended: nothing will run
        them); returns them as withdrawn."""
        now = now or datetime.now(UTC)

        def attempt(conn: Connection) -> list[str]:
            self.db.lock(conn, f"approvals:{case_id}")
            ids = list(conn.execute(select(_approvals.c.approval_id).where(
                _approvals.c.case_id == case_id, _approvals.c.status == ApprovalStatus.pending)
                .order_by(_approvals.c.requested_at).with_for_update()).scalars())
            for approval_id in ids:
                _set(conn, approval_id, ApprovalStatus.expired, now, None, reason)
            return ids

        return [self.get(approval_id) for approval_id in self.db.run(attempt)]

    def record_submitter(self, case_id: str, name: str) -> None:
        """`name` submitted case `case_id`'s exception: it may never approve that case's actions."""
        self.db.run(lambda conn: conn.execute(
            self.db.insert(_submitters).values(case_id=case_id, name=name).on_conflict_do_nothing()))

    def submitters(self, case_id: str) -> set[str]:
        return set(self.db.run(lambda conn: conn.execute(
            select(_submitters.c.name).where(_submitters.c.case_id == case_id)).scalars().all(), write=False))

    def get(self, approval_id: str) -> ApprovalRequest:
        row = self.db.run(lambda conn: conn.execute(
            select(_approvals).where(_approvals.c.approval_id == approval_id)).first(), write=False)
        if row is None:
            raise ApprovalError(f"no approval {approval_id!r}")
        return _record(row)

    def list(self, status: ApprovalStatus | str | None = None, now: datetime | None = None) -> list[ApprovalRequest]:
        """Requests, oldest first; pending ones past their expiry are reported (and stored) expired."""
        self.expire(now)
        query = select(_approvals).order_by(_approvals.c.requested_at, _approvals.c.approval_id)
        if status is not None:
            query = query.where(_approvals.c.status == str(status))
        return [_record(r) for r in self.db.run(lambda conn: conn.execute(query).all(), write=False)]

    def expire(self, now: datetime | None = None) -> int:
        at = (now or datetime.now(UTC)).isoformat()
        return self.db.run(lambda conn: conn.execute(update(_approvals).where(
            _approvals.c.status == ApprovalStatus.pending, _approvals.c.expires_at < at).values(
            status=ApprovalStatus.expired.value, decided_at=at, reason="expired before a decision")).rowcount)

    def decide(self, approval_id: str, *, identity: Identity, approve: bool, args_digest: str,
               reason: str | None = None, now: datetime | None = None,
               separation_of_duties: bool = True) -> ApprovalRequest:
        """Approve or reject a pending request as `identity`, for the action digest it was shown;
        with `separation_of_duties`, never as one of the case's submitters.

        Idempotent for its approver: the same identity sending the same decision (status, digest,
        reason) again, e.g. because the answer to the first was lost, gets the recorded decision
        back; any other decision of a decided request is refused (ApprovalError)."""
        now = now or datetime.now(UTC)
        if identity.kind != "human":
            raise ApprovalError(f"{identity.name} is an agent identity and can never approve")
        require(identity, Role.approver)
        if not approve and not (reason and reason.strip()):
            raise ApprovalError("a rejection needs a reason (the planner is told it)")

        status = ApprovalStatus.approved if approve else ApprovalStatus.rejected

        def attempt(conn: Connection) -> ApprovalError | None:
            current = _for_decision(conn, approval_id)
            if _same_decision(current, status, identity.name, args_digest, reason):
                return None  # a retry of the recorded decision (its answer was lost): answered again
            if current.status != ApprovalStatus.pending:
                why = f" ({current.reason})" if current.reason else ""
                raise ApprovalError(f"{approval_id} is already {current.status.value}{why}")
            if now > current.expires_at:
                _set(conn, approval_id, ApprovalStatus.expired, now, None, "expired before a decision")
                return ApprovalError(f"{approval_id} expired at {current.expires_at.isoformat()}")
            names = set(conn.execute(select(_submitters.c.name).where(
                _submitters.c.case_id == current.case_id)).scalars())
            if separation_of_duties and identity.name in names:
                raise ApprovalError(f"{identity.name} submitted case {current.case_id} and may not "
                                    f"decide its actions (separation of duties); another approver must")
            if args_digest != current.args_digest:
                raise ApprovalError(
                    f"{approval_id}: the action differs from the one previewed "
                    f"(digest {args_digest[:12]} vs {current.args_digest[:12]}); it needs a new approval")
            _set(conn, approval_id, status, now, identity.name, reason)
            return None

        expired = self.db.run(attempt)
        if expired is not None:  # the expiry is recorded (committed), the decision refused
            raise expired
        return self.get(approval_id)

    def approved(self, case_id: str, step: int, args_digest: str) -> ApprovalRequest | None:
        """The approved request for exactly this action, if there is one."""
        row = self.db.run(lambda conn: conn.execute(select(_approvals).where(
            _approvals.c.case_id == case_id, _approvals.c.step == step,
            _approvals.c.args_digest == args_digest,
            _approvals.c.status == ApprovalStatus.approved)).first(), write=False)
        return None if row is None else _record(row)

    def close(self) -> None:
        """Nothing to release: the state's pool is shared by the process's stores."""


def _for_decision(conn: Connection, approval_id: str) -> ApprovalRequest:
    """The request, its row locked until the deciding transaction ends (PostgreSQL: FOR UPDATE;
    SQLite: the transaction already holds the write lock)."""
    row = conn.execute(select(_approvals).where(_approvals.c.approval_id == approval_id)
                       .with_for_update()).first()
    if row is None:
        raise ApprovalError(f"no approval {approval_id!r}")
    return _record(row)


def _same_decision(current: ApprovalRequest, status: ApprovalStatus, approver: str, args_digest: str,
                   reason: str | None) -> bool:
    """`current` already records exactly this decision by this approver."""
    return (current.status == status and current.approver == approver
            and current.args_digest == args_digest and (current.reason or "") == (reason or ""))


def _set(conn: Connection, approval_id: str, status: ApprovalStatus, now: datetime, approver: str | None,
         reason: str | None) -> None:
    conn.execute(update(_approvals).where(_approvals.c.approval_id == approval_id).values(
        status=status.value, decided_at=now.isoformat(), approver=approver, reason=reason))


def _record(row: Row) -> ApprovalRequest:
    data = dict(row._mapping)
    for key in ("args", "reasons", "preview", "supersedes"):
        data[key] = json.loads(data[key]) if data[key] is not None else None
    return ApprovalRequest.model_validate(data)
