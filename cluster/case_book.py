"""The cases one system holds: submit (idempotent per submitter and key), read, list, cancel.

A plain class (the `CaseManager` actor is a thin shell around it), so the API can be tested
in-process. With a `CaseStore` every case is written at each transition its runner makes and
every submission key with its case: a new book on the same store (a restarted case manager)
holds the same cases and keys and resumes each open case from its last completed step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from opsagent.agents.case import Case, CaseStatus, ExceptionReport
from opsagent.agents.planner import PlannerTurn
from opsagent.agents.runner import CaseRunner, ExecutorPort, PlannerPort, PolicyPort, TracePort
from opsagent.cluster.case_store import CaseStore, StoredCase
from opsagent.agents.step_schema import FINISH, PlannedStep
from opsagent.agents.tracing.records import CaseEvent
from opsagent.errors import CaseNotFound, CaseStateError, IdempotencyConflict, OverloadedError
from opsagent.policy.records import args_digest
from opsagent.tools.registry import ToolRegistry


class CaseEntry(BaseModel):
    """A case with what the API needs around it: who submitted it and whether it was cancelled."""

    case: Case
    submitted_by: str | None = Field(None, description="Identity that submitted the exception.")
    idempotency_key: str | None = Field(None, description="The submitter's key, if one was given.")
    cancel_requested_by: str | None = Field(None, description="Who asked to cancel, if anyone.")

    @property
    def approval_ids(self) -> list[str]:
        return [s.approval_id for s in self.case.steps if s.approval_id]


class Submission(BaseModel):
    """The answer to a submission: the case, and whether this call created it (False: a retry)."""

    entry: CaseEntry
    created: bool


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
    exception_types: list[str] | None = Field(None, description="Any of these classes.")
    submitted_by: str | None = None
    with_approval: bool | None = Field(None, description="Only cases that asked for an approval.")
    readable_by: ReadScope | None = Field(None, description="Only cases this scope admits.")
    offset: int = Field(0, ge=0)
    limit: int = Field(50, ge=1, le=200)


class CasePage(BaseModel):
    """One page of a case list."""

    items: list[CaseEntry]
    total: int = Field(description="Cases matching the filters, over all pages.")
    offset: int
    limit: int


class _CancellablePlanner:
    """Stands between the runner and the planner: once a case is cancelled, its next planning
    turn finishes it (escalated, with who cancelled and why) instead of calling the model. The
    runner stops at a step boundary, so a call in flight completes and is traced as usual."""

    def __init__(self, planner: PlannerPort, cancelled: dict[str, str]) -> None:
        self._planner = planner
        self._cancelled = cancelled

    async def plan(self, case: Case, allowed_tools: list[str]) -> PlannerTurn:
        reason = self._cancelled.get(case.case_id)
        if reason is not None:
            return PlannerTurn(step=PlannedStep(tool=FINISH, status="escalated", reason=reason))
        return await self._planner.plan(case, allowed_tools)


class _Checkpointer:
    """The runner's checkpoint port: writes the case (with its entry) to the store."""

    def __init__(self, book: "CaseBook") -> None:
        self._book = book

    async def checkpoint(self, case: Case) -> None:
        await self._book._persist(case.case_id)


class CaseBook:
    """Owns the cases of one system and runs each as an asyncio task."""

    def __init__(self, planner: PlannerPort, policy: PolicyPort, executor: ExecutorPort,
                 tracer: TracePort, registry: ToolRegistry, *, max_steps: int = 6,
                 max_open_cases: int = 1000, store: CaseStore | None = None) -> None:
        self._cancelled: dict[str, str] = {}  # case id -> the reason its finish will carry
        self._store = store
        self._runner = CaseRunner(_CancellablePlanner(planner, self._cancelled), policy, executor,
                                  tracer, registry, max_steps=max_steps,
                                  checkpoint=_Checkpointer(self) if store is not None else None)
        self._tracer = tracer
        self._entries: dict[str, CaseEntry] = {}
        self._keys: dict[tuple[str, str], tuple[str, str]] = {}  # (who, key) -> (case id, digest)
        self._tasks: dict[str, asyncio.Task] = {}
        self._max_open = max_open_cases
        self.recovered = 0
        if store is not None:
            self._load(store)

    def _load(self, store: CaseStore) -> None:
        """Take the stored cases and keys; resume every open case (needs a running loop: the
        actor's, or call `recover_open` later)."""
        for stored in store.load():
            self._entries[stored.case.case_id] = CaseEntry(
                case=stored.case, submitted_by=stored.submitted_by,
                idempotency_key=stored.idempotency_key,
                cancel_requested_by=stored.cancel_requested_by)
            if stored.cancel_reason is not None and not stored.case.status.final:
                self._cancelled[stored.case.case_id] = stored.cancel_reason
        self._keys = store.keys()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.recover_open()

    def recover_open(self) -> int:
        """Resume every open case that is not running (from its last checkpoint); returns how
        many were started. A case awaiting approval resumes only if its approval was decided."""
        started = 0
        for case_id, entry in self._entries.items():
            if not entry.case.status.final and case_id not in self._tasks:
                self._start(case_id, self._runner.recover(entry.case))
                started += 1
        self.recovered += started
        return started

    async def _persist(self, case_id: str) -> None:
        if self._store is None:
            return
        entry = self._entries[case_id]
        await asyncio.to_thread(self._store.save, StoredCase(
            case=entry.case.model_copy(deep=True), submitted_by=entry.submitted_by,
            idempotency_key=entry.idempotency_key, cancel_requested_by=entry.cancel_requested_by,
            cancel_reason=self._cancelled.get(case_id)))

    async def submit(self, report: ExceptionReport, submitted_by: str | None = None,
                     idempotency_key: str | None = None) -> Submission:
        """Open a case and start it. The same submitter and key again returns the same case
        (IdempotencyConflict if the report differs); beyond `max_open_cases` running cases the
        submission is refused (OverloadedError) rather than queued without bound."""
        digest = args_digest("submit", report.model_dump(mode="json"))
        slot = (submitted_by or "", idempotency_key) if idempotency_key else None
        if slot is not None and slot in self._keys:
            case_id, seen = self._keys[slot]
            if seen != digest:
                raise IdempotencyConflict(
                    f"idempotency key {idempotency_key!r} was used for a different exception "
                    f"(case {case_id}); use a new key for a new exception")
            return Submission(entry=self._entries[case_id], created=False)
        if len(self._tasks) >= self._max_open:
            raise OverloadedError("open cases", len(self._tasks), self._max_open)
        case = Case(report=report)
        entry = CaseEntry(case=case, submitted_by=submitted_by, idempotency_key=idempotency_key)
        self._entries[case.case_id] = entry
        if slot is not None:
            self._keys[slot] = (case.case_id, digest)
        if self._store is not None:  # on disk before it is acknowledged
            try:
                await asyncio.to_thread(self._store.save_new, StoredCase(
                    case=case.model_copy(deep=True), submitted_by=submitted_by,
                    idempotency_key=idempotency_key), submitted_by, idempotency_key, digest)
            except BaseException:
                self._entries.pop(case.case_id, None)
                if slot is not None:
                    self._keys.pop(slot, None)
                raise
        self._start(case.case_id, self._runner.run(case))
        return Submission(entry=entry, created=True)

    async def resume(self, case_id: str) -> Case:
        """Continue a case whose held action was decided; a no-op unless it awaits approval."""
        case = self.get(case_id)
        if case_id not in self._tasks:
            self._start(case_id, self._runner.resume(case))
        return case

    async def cancel(self, case_id: str, by: str, reason: str | None = None) -> CaseEntry:
        """Stop a case: it ends `escalated` (a human takes over), the reason naming who cancelled.
        A running case stops before its next planning turn; a paused one at once. A final case
        cannot be cancelled (CaseStateError)."""
        entry = self.entry(case_id)
        case = entry.case
        if case.status.final:
            raise CaseStateError(f"case {case_id} is already {case.status.value}")
        if entry.cancel_requested_by is None:
            entry.cancel_requested_by = by
            self._cancelled[case_id] = f"cancelled by {by}" + (f": {reason}" if reason else "")
            await self._persist(case_id)
        if case_id not in self._tasks:
            await self._finish_cancelled(case)
        return entry

    def get(self, case_id: str) -> Case:
        return self.entry(case_id).case

    def entry(self, case_id: str) -> CaseEntry:
        try:
            return self._entries[case_id]
        except KeyError:
            raise CaseNotFound(case_id) from None

    def list(self, status: str | None = None) -> list[Case]:
        return [e.case for e in self._entries.values() if status is None or e.case.status == status]

    def page(self, query: CaseQuery) -> CasePage:
        """The cases matching `query`, newest first, one page of them."""
        found = [e for e in reversed(self._entries.values()) if _matches(e, query)]
        return CasePage(items=found[query.offset:query.offset + query.limit], total=len(found),
                        offset=query.offset, limit=query.limit)

    def classes(self) -> list[str]:
        """The exception classes of the cases held, sorted."""
        return sorted({e.case.report.exception_type for e in self._entries.values()})

    def counts(self) -> dict[str, int]:
        """Cases per status."""
        counts: dict[str, int] = {}
        for e in self._entries.values():
            counts[e.case.status.value] = counts.get(e.case.status.value, 0) + 1
        return counts

    def open_cases(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout_s: float = 600.0) -> int:
        """Wait until no case is running; returns how many still are when the time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(list(self._tasks.values()), timeout=deadline - loop.time())
        return len(self._tasks)

    def _start(self, case_id: str, work: Awaitable[Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._drive(case_id, work))
        self._tasks[case_id] = task
        task.add_done_callback(lambda _t, cid=case_id: self._tasks.pop(cid, None))

    async def _drive(self, case_id: str, work: Awaitable[Any]) -> None:
        await work
        case = self._entries[case_id].case
        if case_id in self._cancelled and not case.status.final:  # paused after the request
            await self._finish_cancelled(case)

    async def _finish_cancelled(self, case: Case) -> None:
        case.status, case.reason = CaseStatus.escalated, self._cancelled[case.case_id]
        case.finished_at = datetime.now(UTC)
        await self._persist(case.case_id)
        try:
            await self._tracer.export([CaseEvent(
                case_id=case.case_id, exception_type=case.report.exception_type,
                status=case.status.value, description=case.report.description,
                entities=case.report.entities, reason=case.reason, received_at=case.received_at,
                finished_at=case.finished_at)])
        except Exception as exc:  # the tracer is down: the status is still final in memory
            logging.getLogger(__name__).error("cannot trace the cancellation of %s: %s",
                                              case.case_id, exc)


def _matches(entry: CaseEntry, query: CaseQuery) -> bool:
    case = entry.case
    return ((query.status is None or case.status == query.status)
            and (query.exception_types is None or case.report.exception_type in query.exception_types)
            and (query.submitted_by is None or entry.submitted_by == query.submitted_by)
            and (query.with_approval is None or bool(entry.approval_ids) == query.with_approval)
            and (query.readable_by is None or query.readable_by.admits(entry)))
