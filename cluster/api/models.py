"""The API's request and response bodies (its OpenAPI document is derived from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, Field, StrictBool, StringConstraints

from opsagent.agents.case import ENTITY_KEY, CaseStatus, ExceptionReport, Step
from opsagent.cluster.case_records import CaseEntry
from opsagent.policy.approvals import ApprovalRequest
from opsagent.policy.identity import Role
from opsagent.policy.modes import Mode

IDEMPOTENCY_KEY = r"^[A-Za-z0-9._:-]{1,128}$"
DIGEST = r"^[0-9a-f]{64}$"
ENTITY_ID = r"^[A-Za-z0-9._:-]+$"
T = TypeVar("T")


EntityKey = Annotated[str, StringConstraints(pattern=ENTITY_KEY)]
EntityId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ENTITY_ID)]


class SubmitRequest(ExceptionReport):
    """An exception to open a case for; the idempotency key may come here or as a header.
    (`entities` restates the report's rules so the OpenAPI document shows them.)"""

    entities: dict[EntityKey, EntityId] = Field(
        min_length=1, max_length=20, json_schema_extra={"additionalProperties": False},
        description="Referenced records, e.g. {'shipment_id': 'SHP-1'}.")

    idempotency_key: str | None = Field(
        default=None, pattern=IDEMPOTENCY_KEY,
        description="Client-chosen key: a retry with the same key and body returns the same case.")

    def report(self) -> ExceptionReport:
        return ExceptionReport.model_validate(self.model_dump(exclude={"idempotency_key"}))


class SubmitResponse(BaseModel):
    case_id: str
    status: str
    created: bool = Field(description="False when this was a retry of an earlier submission.")
    links: dict[str, str]


class CaseSummary(BaseModel):
    """A case in a list: what it is about, where it stands."""

    case_id: str
    exception_type: str
    status: str
    reason: str | None
    entities: dict[str, str]
    submitted_by: str | None
    received_at: datetime
    finished_at: datetime | None
    steps: int
    approval_ids: list[str]

    @classmethod
    def of(cls, entry: CaseEntry) -> "CaseSummary":
        case = entry.case
        return cls(case_id=case.case_id, exception_type=case.report.exception_type,
                   status=case.status.value, reason=case.reason, entities=case.report.entities,
                   submitted_by=entry.submitted_by, received_at=case.received_at,
                   finished_at=case.finished_at, steps=len(case.steps),
                   approval_ids=entry.approval_ids)


class CaseView(BaseModel):
    """A case as the API shows it, with every step."""

    case_id: str
    exception_type: str
    status: str
    reason: str | None
    description: str
    entities: dict[str, str]
    submitted_by: str | None
    cancel_requested_by: str | None
    received_at: datetime
    finished_at: datetime | None
    policy_version: str | None
    proposed_outcome: str | None = Field(
        default=None, description="Shadow mode: the outcome (resolved / escalated) a `proposed` case "
        "would have reached had its writes run; None for any other status.")
    steps: list[Step] = Field(default_factory=list)

    @classmethod
    def of(cls, entry: CaseEntry) -> "CaseView":
        case = entry.case
        return cls(
            case_id=case.case_id, exception_type=case.report.exception_type,
            status=case.status.value, reason=case.reason, description=case.report.description,
            entities=case.report.entities, submitted_by=entry.submitted_by,
            cancel_requested_by=entry.cancel_requested_by, received_at=case.received_at,
            finished_at=case.finished_at, policy_version=case.policy_version,
            proposed_outcome=case.outcome if case.status == CaseStatus.proposed else None, steps=case.steps,
        )


class ExceptionView(BaseModel):
    """An exception as it was submitted, with the case opened for it."""

    case_id: str
    report: ExceptionReport
    submitted_by: str | None
    idempotency_key: str | None
    received_at: datetime
    status: str

    @classmethod
    def of(cls, entry: CaseEntry) -> "ExceptionView":
        return cls(case_id=entry.case.case_id, report=entry.case.report,
                   submitted_by=entry.submitted_by, idempotency_key=entry.idempotency_key,
                   received_at=entry.case.received_at, status=entry.case.status.value)


class Page(BaseModel, Generic[T]):
    """One page of a list; `next_offset` is None on the last page."""

    items: list[T]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class TimelineEntry(BaseModel):
    """One record about a case from the trace store, in time order."""

    ts: datetime
    kind: str = Field(description="status, planner, action or approval.")
    step: int | None
    summary: str


class CancelRequest(BaseModel):
    model_config = {"extra": "forbid"}
    reason: str | None = Field(default=None, max_length=2000, description="Why, for the record.")


class ApprovalDecision(BaseModel):
    """An approver's decision, bound to the action digest they were shown."""

    model_config = {"extra": "forbid"}
    args_digest: str = Field(pattern=DIGEST, description="Digest shown with the preview.")
    reason: str | None = Field(default=None, max_length=2000, description="Required to reject.")


class RejectDecision(ApprovalDecision):
    """A rejection: the reason is required (the planner is told it)."""

    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S",
                        description="Why the action must not run; the planner is told.")


class ApprovalContext(BaseModel):
    """A held action with what an approver needs to decide it: the case, the exception as ops
    wrote it, the planner's reasoning (the evidence it stated and what it read before) and the
    system's dry-run diff (in `approval.preview`)."""

    approval: ApprovalRequest
    case_status: str | None = Field(description="None if the case is no longer known.")
    description: str | None
    entities: dict[str, str]
    evidence: dict[str, Any] = Field(description="What the planner stated before proposing it.")
    reads: list[str] = Field(description="Tools the case ran successfully before this step.")
    decidable: bool = Field(description="Pending, and its case still waits for it.")


class ModeRequest(BaseModel):
    """A class's new autonomy mode and why (recorded with the change). A promotion goes one stage
    up and needs the class to be eligible (policy/gates.py); a demotion is always allowed."""

    model_config = {"extra": "forbid"}
    mode: Mode = Field(description="shadow, supervised or autonomous.")
    reason: str = Field(min_length=1, max_length=500, pattern=r"\S", description="Why, for the record.")
    override: StrictBool = Field(
        default=False, description="Promote one stage although the class is not eligible; the recorded "
        "reason then says the gate was overridden and on what evidence. Never skips a stage.")


class TokenRequest(BaseModel):
    """A new API token: for whom, which roles, how long it lives."""

    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$",
                      description="Who the token is for (traced as the identity).")
    roles: list[Role] = Field(min_length=1, max_length=4, description="submitter, approver, auditor, admin.")
    expires_s: float | None = Field(default=None, gt=0, le=10 * 365 * 86400,
                                    description="Seconds until it expires; None: until revoked.")


class PolicyUpload(BaseModel):
    """A new policy file's text."""

    model_config = {"extra": "forbid"}
    yaml: str = Field(min_length=1, max_length=1_000_000, description="The policy YAML.")


class PolicyVersion(BaseModel):
    version: str
    reloaded_by: str | None = None


class Health(BaseModel):
    status: str
    open_cases: int | None = None


class ClassStats(BaseModel):
    """One class in the overview; automated of cases is the class's automation rate."""

    exception_type: str
    cases: int
    automated: int
    with_approval: int
    escalated: int
    open: int


class Overview(BaseModel):
    """What the operations team watches: automation, latency, approvals, the invariant."""

    cases: int
    by_status: dict[str, int]
    automation_rate: float | None = Field(
        description="Cases resolved with no approval asked, of every case received (open ones count as "
        "not automated and are shown apart in open_cases); None before the first case.")
    automated: int = Field(0, description="Cases resolved with no approval asked.")
    open_cases: int = Field(0, description="Cases not yet final (received, planning, executing, "
                            "awaiting approval).")
    p50_latency_s: float | None = Field(description="Receipt to final status, finished cases.")
    p95_latency_s: float | None
    open_approvals: int
    unsupervised_high_risk: int = Field(
        description="Executed high-risk actions without an approval of exactly their arguments.")
    per_class: list[ClassStats]
    received_per_hour: list[tuple[datetime, int]] = Field(description="The last 24 hours.")
