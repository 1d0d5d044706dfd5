"""The cases one system holds: submit (idempotent per submitter and key), read, list, cancel.

A plain class (the `CaseManager` actor is a thin shell around it), so the API can be tested
in-process. With a `CaseStore` every case is written at each transition its runner makes and
every submission key with its case: a new book on the same store (a restarted case manager)
holds the same cases and keys and resumes each open case from its last completed step.

Memory stays bounded with a store: the book holds the open cases and the `case_cache` most
recently finished ones; an older case is read back from the store, and lists, counts and
submission keys are answered by the store over every case. Without a store (in-process tests)
every case stays in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable
from itertools import islice
from datetime import UTC, datetime
from typing import Any

from opsagent.agents.case import Case, CaseStatus, ExceptionReport
from opsagent.agents.ports import ExecutorPort, PlannerPort, PolicyPort, TracePort
from opsagent.agents.runner import CaseRunner
from opsagent.agents.tracing.records import CaseEvent
from opsagent.cluster.case_query import CaseQuery, matches
from opsagent.cluster.case_records import CaseEntry, CaseLease, CasePage, Submission
from opsagent.cluster.case_store import CaseStore, StoredCase
from opsagent.errors import (
    CaseNotFound, CaseStateError, ConfigError, IdempotencyConflict, OverloadedError,
)
from opsagent.policy.records import args_digest
from opsagent.tools.registry import ToolRegistry


class CaseBook:
    """Owns the cases of one system and runs each as an asyncio task."""

    def __init__(self, planner: PlannerPort, policy: PolicyPort, executor: ExecutorPort,
                 tracer: TracePort, registry: ToolRegistry, *, max_steps: int = 6,
                 max_open_cases: int = 1000, store: CaseStore | None = None,
                 case_cache: int = 1000, lease: CaseLease | None = None) -> None:
        if case_cache < 0:
            raise ConfigError(f"case_cache must be 0 or more, not {case_cache}")
        self._cancelled: dict[str, str] = {}  # case id -> the reason its finish will carry
        self._store = store
        self._runner = CaseRunner(planner, policy, executor, tracer, registry, max_steps=max_steps,
                                  cases=self)
        self._tracer = tracer
        self._entries: dict[str, CaseEntry] = {}  # every open case, and finished ones held
        # (who, key) -> (case id, digest): every key without a store; with one, the submissions
        # not yet written (the store answers for the others)
        self._keys: dict[tuple[str, str], tuple[str, str]] = {}
        # with a store: the finished cases held whose final state is stored, oldest first
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._case_cache = case_cache
        self._writing: dict[str, asyncio.Lock] = {}  # case id -> its writes' turn
        self._tasks: dict[str, asyncio.Task] = {}
        self._max_open = max_open_cases
        self.recovered = 0
        if store is not None:
            if lease is not None:  # the one case manager of the database: only it resumes cases
                store.hold(lease.owner, lease.ttl_s, wait_s=lease.wait_s)
            self._load(store)

    def _load(self, store: CaseStore) -> None:
        """Take the open cases and the `case_cache` most recent finished ones; resume every open
        case (needs a running loop: the actor's, or call `recover_open` later)."""
        for stored in store.load(recent_final=self._case_cache):
            case_id = stored.case.case_id
            self._entries[case_id] = _entry(stored)
            if stored.case.status.final:
                self._finished[case_id] = None
            elif stored.cancel_reason is not None:
                self._cancelled[case_id] = stored.cancel_reason
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.recover_open()

    def recover_open(self) -> int:
        """Resume every open case that is not running (from its last checkpoint); returns how
        many were started. A case awaiting approval resumes only if its approval was decided."""
        started = 0
        for case_id, entry in list(self._entries.items()):
            if not entry.case.status.final and case_id not in self._tasks:
                self._start(case_id, self._runner.recover(entry.case))
                started += 1
        self.recovered += started
        return started

    async def checkpoint(self, case: Case) -> None:
        """The runner's checkpoint (`CaseStorePort`): write the case, with its entry, to the store."""
        await self._persist(self._entries[case.case_id])  # a running case is held

    def cancel_reason(self, case_id: str) -> str | None:
        """Why the case was cancelled, if it was (`CaseStorePort`): its runner then ends it."""
        return self._cancelled.get(case_id)

    async def _persist(self, entry: CaseEntry) -> None:
        """Write the case as it is now. One write per case at a time, each taking the case when
        its turn comes: a cancel's write cannot land after (and undo) the final checkpoint."""
        if self._store is None:
            return
        case_id = entry.case.case_id
        async with self._writing.setdefault(case_id, asyncio.Lock()):
            stored = StoredCase(
                case=entry.case.model_copy(deep=True), submitted_by=entry.submitted_by,
                idempotency_key=entry.idempotency_key, cancel_requested_by=entry.cancel_requested_by,
                cancel_reason=self._cancelled.get(case_id))
            await asyncio.to_thread(self._store.save, stored)
        if stored.case.status.final and self._entries.get(case_id) is entry:
            self._finished[case_id] = None  # stored as final: may be let go once nothing runs it

    async def submit(self, report: ExceptionReport, submitted_by: str | None = None,
                     idempotency_key: str | None = None) -> Submission:
        """Open a case and start it. The same submitter and key again returns the same case
        (IdempotencyConflict if the report differs); beyond `max_open_cases` running cases the
        submission is refused (OverloadedError) rather than queued without bound."""
        digest = args_digest("submit", report.model_dump(mode="json"))
        slot = (submitted_by or "", idempotency_key) if idempotency_key else None
        seen = None if slot is None else self._keys.get(slot)
        if slot is not None and seen is None and self._store is not None:
            seen = self._store.key(*slot)
        if seen is not None:
            case_id, seen_digest = seen
            if seen_digest != digest:
                raise IdempotencyConflict(
                    f"idempotency key {idempotency_key!r} was used for a different exception "
                    f"(case {case_id}); use a new key for a new exception")
            return Submission(entry=self._started(case_id), created=False)
        if len(self._tasks) >= self._max_open:
            raise OverloadedError("open cases", len(self._tasks), self._max_open)
        case = Case(report=report, submitted_by=submitted_by)
        entry = CaseEntry(case=case, submitted_by=submitted_by, idempotency_key=idempotency_key)
        self._entries[case.case_id] = entry
        if slot is not None:
            self._keys[slot] = (case.case_id, digest)
        if self._store is not None:  # on disk before it is acknowledged
            try:
                taken = await asyncio.to_thread(self._store.save_new, StoredCase(
                    case=case.model_copy(deep=True), submitted_by=submitted_by,
                    idempotency_key=idempotency_key), submitted_by, idempotency_key, digest)
            except BaseException:
                self._entries.pop(case.case_id, None)
                raise
            finally:
                if slot is not None:
                    self._keys.pop(slot, None)  # the store has it now (or nobody has)
            if taken is not None:  # another case manager stored this key first: its case answers
                self._entries.pop(case.case_id, None)
                if taken[1] != digest:
                    raise IdempotencyConflict(
                        f"idempotency key {idempotency_key!r} was used for a different exception "
                        f"(case {taken[0]}); use a new key for a new exception")
                return Submission(entry=self.entry(taken[0]), created=False)
        self._start(case.case_id, self._runner.run(case))
        return Submission(entry=entry, created=True)

    def _started(self, case_id: str) -> CaseEntry:
        """The case a submission key names. One open in the store that this case manager (the
        lease holder) neither holds nor runs was stored by a submission whose answer was lost
        (the state database went away at its commit; the client retried with its key): it is
        taken and started now, so it runs once."""
        entry = self.entry(case_id)
        store = self._store
        if (store is not None and store.owner is not None and case_id not in self._entries
                and not entry.case.status.final):
            self._entries[case_id] = entry
            self._start(case_id, self._runner.recover(entry.case))
        return entry

    async def resume(self, case_id: str) -> Case:
        """Continue a case whose held action was decided; a no-op unless it awaits approval."""
        case = self.get(case_id)
        if not case.status.final and case_id not in self._tasks:
            self._start(case_id, self._runner.resume(case))
        return case

    async def cancel(self, case_id: str, by: str, reason: str | None = None) -> CaseEntry:
        """Stop a case: it ends `escalated` (a human takes over), the reason naming who cancelled.
        A running case stops before its next planning turn; a paused one at once. A final case
        cannot be cancelled (CaseStateError)."""
        entry = self.entry(case_id)
        if entry.case.status.final:
            raise CaseStateError(f"case {case_id} is already {entry.case.status.value}")
        if entry.cancel_requested_by is None:
            entry.cancel_requested_by = by
            self._cancelled[case_id] = f"cancelled by {by}" + (f": {reason}" if reason else "")
            await self._persist(entry)
        # it may have finished (or been resumed) while the request was written
        if case_id not in self._tasks and not entry.case.status.final:
            await self._finish_cancelled(entry)
            self._retire(case_id)
        return entry

    def get(self, case_id: str) -> Case:
        return self.entry(case_id).case

    def entry(self, case_id: str) -> CaseEntry:
        """A case held, or else read back from the store (CaseNotFound if neither has it)."""
        entry = self._entries.get(case_id)
        if entry is not None:
            return entry
        stored = self._store.get(case_id) if self._store is not None else None
        if stored is None:
            raise CaseNotFound(case_id)
        return _entry(stored)

    def list(self, status: str | None = None) -> list[Case]:
        """Every case (of that status), oldest first."""
        if self._store is not None:
            return self._store.with_status(None if status is None else str(status))
        return [e.case for e in self._entries.values() if status is None or e.case.status == status]

    def page(self, query: CaseQuery) -> CasePage:
        """The cases matching `query`, newest first, one page of them."""
        if self._store is not None:
            stored, total = self._store.page(query)
            items = [_entry(s) for s in stored]
        else:
            found = [e for e in reversed(self._entries.values()) if matches(e, query)]
            items, total = found[query.offset:query.offset + query.limit], len(found)
        return CasePage(items=items, total=total, offset=query.offset, limit=query.limit)

    def classes(self) -> list[str]:
        """The exception classes of the cases, sorted."""
        if self._store is not None:
            return self._store.classes()
        return sorted({e.case.report.exception_type for e in self._entries.values()})

    def counts(self) -> dict[str, int]:
        """Cases per status."""
        if self._store is not None:
            return self._store.counts()
        counts: dict[str, int] = {}
        for e in self._entries.values():
            counts[e.case.status.value] = counts.get(e.case.status.value, 0) + 1
        return counts

    def held(self) -> int:
        """Cases held in memory (open ones, and with a store at most `case_cache` finished)."""
        return len(self._entries)

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
        task.add_done_callback(lambda _t, cid=case_id: self._task_done(cid))

    def _task_done(self, case_id: str) -> None:
        self._tasks.pop(case_id, None)
        self._retire(case_id)

    async def _drive(self, case_id: str, work: Awaitable[Any]) -> None:
        await work
        entry = self._entries[case_id]  # held while it runs
        if case_id in self._cancelled and not entry.case.status.final:  # paused after the request
            await self._finish_cancelled(entry)

    def _retire(self, case_id: str) -> None:
        """Once a case is final and nothing runs it: forget its cancel reason and, with a store,
        let go of the oldest finished cases beyond `case_cache` (the store answers for them)."""
        entry = self._entries.get(case_id)
        if entry is None or not entry.case.status.final or case_id in self._tasks:
            return
        self._cancelled.pop(case_id, None)
        self._writing.pop(case_id, None)
        excess = len(self._finished) - self._case_cache
        if self._store is None or excess <= 0:
            return
        for old in list(islice(self._finished, excess + len(self._tasks))):
            if excess > 0 and old not in self._tasks:
                del self._finished[old]
                self._entries.pop(old, None)
                excess -= 1

    async def _finish_cancelled(self, entry: CaseEntry) -> None:
        case = entry.case
        case.status, case.reason = CaseStatus.escalated, self._cancelled[case.case_id]
        case.finished_at = datetime.now(UTC)
        await self._runner.withdraw_approvals(case)  # before the final state is stored
        await self._persist(entry)
        try:
            await self._tracer.export([CaseEvent(
                case_id=case.case_id, exception_type=case.report.exception_type,
                status=case.status.value, description=case.report.description,
                entities=case.report.entities, reason=case.reason, received_at=case.received_at,
                finished_at=case.finished_at)])
        except Exception as exc:  # the tracer is down: the status is still final in memory
            logging.getLogger(__name__).error("cannot trace the cancellation of %s: %s",
                                              case.case_id, exc)


def _entry(stored: StoredCase) -> CaseEntry:
    return CaseEntry(case=stored.case, submitted_by=stored.submitted_by,
                     idempotency_key=stored.idempotency_key,
                     cancel_requested_by=stored.cancel_requested_by)
