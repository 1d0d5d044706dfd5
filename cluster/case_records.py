"""What the case book hands out: a case with who submitted it and whether it was cancelled, the
answer to a submission, a page of a case list."""

from __future__ import annotations

from pydantic import BaseModel, Field

from opsagent.agents.case import Case


class CaseEntry(BaseModel):
    """A case with what the API needs around it: who submitted it and whether it was cancelled."""

    case: Case
    submitted_by: str | None = Field(None, description="Identity that submitted the exception.")
    idempotency_key: str | None = Field(None, description="The submitter's key, if one was given.")
    cancel_requested_by: str | None = Field(None, description="Who asked to cancel, if anyone.")

    @property
    def approval_ids(self) -> list[str]:
        return [s.approval_id for s in self.case.steps if s.approval_id]


class CaseLease(BaseModel):
    """Who this case manager is to the state database, and how long its lease lasts unrenewed."""

    owner: str = Field(description="Stable across restarts of one system's case manager (its incarnations "
                       "re-take their own lease at once), different for another system on the same database.")
    ttl_s: float = Field(30.0, gt=0, description="Seconds the lease outlives its last renewal.")
    wait_s: float = Field(45.0, ge=0, description="Seconds to wait at start for another holder's lease to lapse.")


class Submission(BaseModel):
    """The answer to a submission: the case, and whether this call created it (False: a retry)."""

    entry: CaseEntry
    created: bool


class CasePage(BaseModel):
    """One page of a case list."""

    items: list[CaseEntry]
    total: int = Field(description="Cases matching the filters, over all pages.")
    offset: int
    limit: int
