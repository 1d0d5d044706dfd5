"""The cases one system holds: submit (idempotent per submitter and key), read, list, cancel.

A plain class (the `CaseManager` actor is a thin shell around it), so the API can be tested
in-process. With a `CaseStore` every case is written at each transition its runner makes and
every submission key with its case: a new book on the same store (a restarted case manager)
holds the same cases and keys and resumes each open case from its last completed step.

A case parked because the state database stayed away longer than `state_wait_s` (see
agents/runner.py) is resumed by the book itself once the database answers again: a watch checks
the database after a pause (1 s, doubling to 30 s) or as soon as another write succeeds, then
resumes each parked case from its stored checkpoint, as a restart would; a case is only started
when no task of this book runs it, so it never runs twice at once.

Reads of the store from the event loop's coroutines go through a worker thread: a database that
does not answer (a connect waits up to 10 s) holds up that call, not every other one.

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
from opsagent.agents.runner import STATE_WAIT_S, CaseRunner
from opsagent.agents.tracing.records import CaseEvent
from opsagent.cluster.case_query import CaseQuery, matches
from opsagent.cluster.case_records import CaseEntry, CaseLease, CasePage, Submission
from opsagent.cluster.case_store import CaseStore, StoredCase
from opsagent.errors import (
    CaseNotFound, CaseStateError, ConfigError, IdempotencyConflict, OverloadedError, StateUnavailable,
)
from opsagent.policy.records import args_digest
from opsagent.tools.registry import ToolRegistry

log = logging.getLogger(__name__)
PARKED_PAUSE_S, PARKED_PAUSE_MAX_S = 1.0, 30.0  # between checks whether the state database is back


class CaseBook:
    """Owns the cases of one system and runs each as an asyncio task."""

    def __init__(self, planner: PlannerPort, policy: PolicyPort, executor: ExecutorPort,
                 tracer: TracePort, registry: ToolRegistry, *, max_steps: int = 6,
                 max_open_cases: int = 1000, store: CaseStore | None = None,
                 case_cache: int = 1000, lease: CaseLease | None = None,
                 state_wait_s: float = STATE_WAIT_S) -> None:
        """`state_wait_s`: how long a case waits for a state database that is away before it is
        parked (then resumed by this book once the database answers)."""
        if case_cache < 0:
            raise ConfigError(f"case_cache must be 0 or more, not {case_cache}")
        self._cancelled: dict[str, str] = {}  # case id -> the reason its finish will carry
        self._store = store
        self._runner = CaseRunner(planner, policy, executor, tracer, registry, max_steps=max_steps,
                                  cases=self, state_wait_s=state_wait_s)
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
        self._resume_asked: set[str] = set()  # decided while their task was still ending
        self._max_open = max_open_cases
        self.recovered = 0
        self.unparked = 0  # parked cases this book resumed once the state database was back
        self._parked_watch: asyncio.Task | None = None
        self._state_answered = asyncio.Event()  # a write succeeded: the watch looks at once
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
        if self._runner.parked:
            self._state_answered.set()
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
            seen = await asyncio.to_thread(self._store.key, *slot)
        if seen is not None:
            case_id, seen_digest = seen
            if seen_digest != digest:
                raise IdempotencyConflict(
                    f"idempotency key {idempotency_key!r} was used for a different exception "
                    f"(case {case_id}); use a new key for a new exception")
            return Submission(entry=self._started(await self._fetch(case_id)), created=False)
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
                return Submission(entry=await self._fetch(taken[0]), created=False)
        self._start(case.case_id, self._runner.run(case))
        return Submission(entry=entry, created=True)

    def _started(self, entry: CaseEntry) -> CaseEntry:
        """The case a submission key names (`entry`, as fetched). One open in the store that this
        case manager (the lease holder) neither holds nor runs was stored by a submission whose
        answer was lost (the state database went away at its commit; the client retried with its
        key): it is taken and started now, so it runs once."""
        case_id = entry.case.case_id
        store = self._store
        if (store is not None and store.owner is not None and case_id not in self._entries
                and case_id not in self._tasks and not entry.case.status.final):
            self._entries[case_id] = entry
            self._start(case_id, self._runner.recover(entry.case))
        return entry

    async def resume(self, case_id: str) -> Case:
        """Continue a case whose held action was decided; a no-op unless it awaits approval.

        A decision can land while the task that paused the case is still ending (its pause is
        stored and shown, its trace still being written): the resume is then kept and made as
        soon as that task has ended, never dropped (a case would wait for a decision already made)."""
        case = (await self._fetch(case_id)).case
        if not case.status.final:
            if case_id in self._tasks:
                self._resume_asked.add(case_id)
            else:
                self._start(case_id, self._runner.resume(case))
        return case

    async def cancel(self, case_id: str, by: str, reason: str | None = None) -> CaseEntry:
        """Stop a case: it ends `escalated` (a human takes over), the reason naming who cancelled.
        A running case stops before its next planning turn; a paused one at once. A final case
        cannot be cancelled (CaseStateError)."""
        entry = await self._fetch(case_id)
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
        return self._read(case_id).case

    async def _fetch(self, case_id: str) -> CaseEntry:
        """`entry` from a coroutine: a case not held is read in a worker thread."""
        entry = self._entries.get(case_id)
        return entry if entry is not None else await asyncio.to_thread(self._read, case_id)

    def entry(self, case_id: str) -> CaseEntry:
        """A case held, or else read back from the store (CaseNotFound if neither has it)."""
        return self._read(case_id)

    def _read(self, case_id: str) -> CaseEntry:
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
        self._runner.parked.discard(case_id)  # this task runs it now
        task = asyncio.get_running_loop().create_task(self._drive(case_id, work))
        self._tasks[case_id] = task
        task.add_done_callback(lambda _t, cid=case_id: self._task_done(cid))

    def _task_done(self, case_id: str) -> None:
        self._tasks.pop(case_id, None)
        if case_id in self._resume_asked:  # decided while this task was ending: resume it now
            self._resume_asked.discard(case_id)
            entry = self._entries.get(case_id)
            if entry is not None and entry.case.status == CaseStatus.awaiting_approval:
                self._start(case_id, self._runner.resume(entry.case))
                return
        self._retire(case_id)

    async def _drive(self, case_id: str, work: Awaitable[Any]) -> None:
        await work
        entry = self._entries[case_id]  # held while it runs
        if case_id in self._cancelled and not entry.case.status.final:  # paused after the request
            try:
                await self._finish_cancelled(entry)
            except StateUnavailable as exc:  # not stored as final: ended when the database is back
                log.error("case %s parked before its cancellation was stored: %s", case_id, exc)
                self._runner.parked.add(case_id)
        if case_id in self._runner.parked and (self._parked_watch is None or self._parked_watch.done()):
            self._parked_watch = asyncio.get_running_loop().create_task(self._watch_parked())

    def parked(self) -> list[str]:
        """The cases parked for a state database that stayed away, waiting for it to answer."""
        return sorted(self._runner.parked)

    async def _watch_parked(self) -> None:
        """While cases are parked: after a pause (or at once when a write succeeded), check that
        the state database answers; then resume each parked case that nothing runs."""
        pause = PARKED_PAUSE_S
        while self._runner.parked:
            self._state_answered.clear()
            try:
                await asyncio.wait_for(self._state_answered.wait(), pause)
            except TimeoutError:
                pass
            if not await self._state_answers():
                pause = min(pause * 2, PARKED_PAUSE_MAX_S)
                continue
            pause = PARKED_PAUSE_S
            for case_id in sorted(self._runner.parked):
                if case_id in self._tasks:  # its task is ending (it parked just now): next round
                    continue
                try:
                    entry = await self._checkpointed(case_id)
                except Exception as exc:  # noqa: BLE001 - away again: the next round tries again
                    log.error("cannot read parked case %s: %s", case_id, exc)
                    break
                if case_id in self._tasks or case_id not in self._runner.parked:
                    continue  # started meanwhile (an approval's resume, a retried submission)
                self._runner.parked.discard(case_id)
                if not entry.case.status.final:
                    log.warning("case %s resumes: the state database answers again", case_id)
                    self._start(case_id, self._runner.recover(entry.case))
                    self.unparked += 1

    async def _state_answers(self) -> bool:
        """Whether the state database answers a read now (without a store: assumed)."""
        if self._store is None:
            return True
        try:
            await asyncio.to_thread(self._store.ping)
            return True
        except StateUnavailable:
            return False
        except Exception as exc:  # noqa: BLE001 - not back yet, whatever the cause
            log.error("the state database does not answer: %s", exc)
            return False

    async def _checkpointed(self, case_id: str) -> CaseEntry:
        """A parked case as last stored (what a restarted case manager would resume), held again;
        without a store, as held."""
        entry = self._entries[case_id]
        stored = None if self._store is None else await asyncio.to_thread(self._store.get, case_id)
        if stored is None or case_id in self._tasks:
            return entry
        entry = self._entries[case_id] = _entry(stored)
        if stored.cancel_reason is not None:
            self._cancelled.setdefault(case_id, stored.cancel_reason)
        return entry

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
