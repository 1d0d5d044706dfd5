"""Which cases a list asks for: filters, a reader's scope and a page, checked in memory or as SQL.

The case book answers a `CaseQuery` over the cases it holds (`matches`) or, with a store, over
every stored case (`where`: the same filters as an SQL condition on its indexed columns).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, and_, false, or_, true

from opsagent.agents.case import CaseStatus
from opsagent.cluster.case_records import CaseEntry
from opsagent.policy.state._schema import cases


class ReadScope(BaseModel):
    """Which cases a caller may read: all, the ones it submitted, and/or the ones that asked
    for an approval."""

    everything: bool = False
    submitter: str | None = None
    approvals: bool = False

    def admits(self, entry: CaseEntry) -> bool:
        return (self.everything or (self.submitter is not None and entry.submitted_by == self.submitter)
                or (self.approvals and bool(entry.approval_ids)))


class CaseQuery(BaseModel):
    """Filters and a page of the case list; None means no filter. Newest cases first."""

    model_config = {"extra": "forbid"}
    status: CaseStatus | None = None
    case_ids: list[str] | None = Field(None, max_length=200, description="Any of these cases.")
    exception_types: list[str] | None = Field(None, description="Any of these classes.")
    submitted_by: str | None = None
    with_approval: bool | None = Field(None, description="Only cases that asked for an approval.")
    readable_by: ReadScope | None = Field(None, description="Only cases this scope admits.")
    offset: int = Field(0, ge=0)
    limit: int = Field(50, ge=1, le=200)


def matches(entry: CaseEntry, query: CaseQuery) -> bool:
    """Whether a case held in memory passes the query's filters."""
    case = entry.case
    return ((query.status is None or case.status == query.status)
            and (query.case_ids is None or case.case_id in query.case_ids)
            and (query.exception_types is None or case.report.exception_type in query.exception_types)
            and (query.submitted_by is None or entry.submitted_by == query.submitted_by)
            and (query.with_approval is None or bool(entry.approval_ids) == query.with_approval)
            and (query.readable_by is None or query.readable_by.admits(entry)))


def where(query: CaseQuery) -> ColumnElement[bool]:
    """The query's filters as an SQL condition on the store's `cases` table (the same cases
    `matches` admits)."""
    terms: list[ColumnElement[bool]] = []
    if query.status is not None:
        terms.append(cases.c.status == query.status.value)
    if query.case_ids is not None:
        terms.append(cases.c.case_id.in_(query.case_ids))
    if query.exception_types is not None:
        terms.append(cases.c.exception_type.in_(query.exception_types))
    if query.submitted_by is not None:
        terms.append(cases.c.submitted_by == query.submitted_by)
    if query.with_approval is not None:
        terms.append(cases.c.has_approval == int(query.with_approval))
    scope = query.readable_by
    if scope is not None and not scope.everything:
        admitted = []
        if scope.submitter is not None:
            admitted.append(cases.c.submitted_by == scope.submitter)
        if scope.approvals:
            admitted.append(cases.c.has_approval == 1)
        terms.append(or_(false(), *admitted))
    return and_(true(), *terms)
