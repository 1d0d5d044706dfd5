"""An exception as ops report it, and the case opsagent opens to resolve it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

ENTITY_KEY = r"^[a-z][a-z0-9_]{0,40}$"


class ExceptionReport(BaseModel):
    """What ops submit: the exception's class, their description, the entities it is about."""

    model_config = {"extra": "forbid"}

    exception_type: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Exception class.")
    description: str = Field(min_length=1, max_length=4000, description="Free text from ops.")
    entities: dict[str, str] = Field(
        min_length=1, max_length=20, description="Referenced records, e.g. {'shipment_id': 'SHP-1'}."
    )

    @field_validator("entities")
    @classmethod
    def _entities_are_ids(cls, value: dict[str, str]) -> dict[str, str]:
        import re

        for key, ident in value.items():
            if not re.match(ENTITY_KEY, key):
                raise ValueError(f"entity key {key!r} must be snake_case (e.g. shipment_id)")
            if not ident or len(ident) > 64 or not re.match(r"^[A-Za-z0-9._:-]+$", ident):
                raise ValueError(f"entity {key}={ident!r} must be 1-64 chars of A-Z a-z 0-9 . _ : -")
        return value


class CaseStatus(StrEnum):
    received = "received"
    planning = "planning"
    executing = "executing"
    awaiting_approval = "awaiting_approval"
    resolved = "resolved"
    escalated = "escalated"
    failed = "failed"
    proposed = "proposed"  # shadow mode: the agent's writes were proposed and dry-run, none executed

    @property
    def final(self) -> bool:
        return self in (CaseStatus.resolved, CaseStatus.escalated, CaseStatus.failed, CaseStatus.proposed)


class Step(BaseModel):
    """One planner proposal and what became of it."""

    step: int
    tool: str  # a tool name, or "finish"
    args: dict[str, Any] = Field(default_factory=dict)
    evidence: dict[str, Any] = Field(default_factory=dict)
    verdict: Literal["allow", "require_approval", "deny", "propose"] | None = None
    risk: str | None = None
    reasons: list[str] = Field(default_factory=list)
    executed: bool = False
    ok: bool | None = None
    result: Any = None
    error: str | None = None
    approval_id: str | None = None
    confidence: float | None = None  # the planner's probability of this tool (agents/confidence.py)

    @property
    def done(self) -> bool:
        """It ran and succeeded, or (shadow mode) it was proposed and its dry run succeeded:
        `result` is then what the write would have returned, as the system's preview shows it."""
        return bool(self.ok) and (self.executed or self.verdict == "propose")

    @property
    def failed(self) -> bool:
        """It ran, or was proposed, and the system refused it (or its dry run)."""
        return self.ok is False and (self.executed or self.verdict == "propose")


class Case(BaseModel):
    """A case's full state: the report, the steps so far, the outcome."""

    case_id: str = Field(default_factory=lambda: f"case-{uuid.uuid4().hex[:12]}")
    report: ExceptionReport
    status: CaseStatus = CaseStatus.received
    steps: list[Step] = Field(default_factory=list)
    reason: str | None = None
    received_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    last_write_at: datetime | None = None  # last successful system-of-record update
    policy_version: str | None = None
    submitted_by: str | None = None  # who submitted the exception: never its approver
    outcome: Literal["resolved", "escalated"] | None = None  # for a `proposed` case: what the agent proposed
    planner_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def latency_s(self) -> float | None:
        """Receipt to last system-of-record update (or to the final status if nothing was written)."""
        end = self.last_write_at or self.finished_at
        return None if end is None else (end - self.received_at).total_seconds()
