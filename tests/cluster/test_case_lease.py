"""Exactly-once recovery with more than one case manager on one state database (an upgrade
that starts a second system, a restart on another node while the old one is cut off): only the
lease holder resumes the open cases; a manager that lost its lease writes nothing more. On
SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from opsagent.agents.case import Case, CaseStatus
from opsagent.cluster.case_book import CaseBook, CaseLease
from opsagent.cluster.case_store import CaseStore, StoredCase
from opsagent.errors import StateBusy
from opsagent.policy.records import args_digest
from opsagent.policy.state import State
from tests.fakes.book_ports import DescribedPlanner, HoldingPolicy, ListTracer, held_registry, report


def _book(url: str, owner: str, *, ttl_s: float = 30, wait_s: float = 0.5) -> CaseBook:
    return CaseBook(DescribedPlanner(), HoldingPolicy(), executor=None, tracer=ListTracer(),
                    registry=held_registry(), store=CaseStore(State(url)),
                    lease=CaseLease(owner=owner, ttl_s=ttl_s, wait_s=wait_s))


def _open_cases(url: str, n: int) -> list[str]:
    store = CaseStore(State(url))
    cases = [Case(report=report("resolve", i), status=CaseStatus.planning) for i in range(n)]
    for case in cases:
        store.save(StoredCase(case=case, submitted_by="alice"))
    store.db.close()
    return [c.case_id for c in cases]


def test_of_managers_starting_at_once_exactly_one_resumes_the_open_cases(state_url) -> None:
    opened = _open_cases(state_url, 3)
    books: dict[str, CaseBook] = {}
    refused: list[str] = []
    barrier = threading.Barrier(4)

    def start(owner: str) -> None:
        barrier.wait()
        try:
            books[owner] = _book(state_url, owner)
        except StateBusy as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=start, args=(f"system-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(books) == 1 and len(refused) == 3
    (owner, book), = books.items()
    assert all(f"case manager {owner} holds the cases" in why for why in refused)

    async def resume() -> int:
        started = book.recover_open()
        await book.drain(10)
        return started

    assert asyncio.run(resume()) == 3
    assert {c.case_id for c in book.list("resolved")} == set(opened)
    book._store.release_lease(owner)


def test_a_restarted_manager_of_the_same_system_takes_its_own_lease_at_once(state_url) -> None:
    _open_cases(state_url, 1)
    first = _book(state_url, "system-a")
    began = time.monotonic()
    again = _book(state_url, "system-a", wait_s=0)  # the same system's case manager, restarted
    assert time.monotonic() - began < 5 and len(again.list()) == 1
    with pytest.raises(StateBusy):
        _book(state_url, "system-b", wait_s=0)
    for book in (first, again):
        book._store.release_lease("system-a")


def test_a_manager_that_lost_its_lease_writes_nothing_more(state_url) -> None:
    _open_cases(state_url, 1)
    old = _book(state_url, "system-a", ttl_s=0.6)
    old._store._renewing.set()  # cut off: it renews no more
    newer = _book(state_url, "system-b", ttl_s=30, wait_s=5)  # takes over once the lease lapsed
    case = old.list()[0]
    with pytest.raises(StateBusy, match="system-a no longer holds the cases"):
        old._store.save(StoredCase(case=case.model_copy(update={"status": CaseStatus.failed})))
    assert newer._store.get(case.case_id).case.status == CaseStatus.planning  # untouched
    newer._store.release_lease("system-b")


def test_a_submission_stored_but_unanswered_is_started_once_by_its_retry(state_url) -> None:
    """The database went away at a submission's commit: the case and its key were stored but the
    client heard an error (503). Its retry with the key answers that case, and the lease holder
    starts it then, once (a second retry finds it running)."""
    async def scenario() -> tuple[str, bool, bool, str]:
        book = _book(state_url, "system-a")
        lost = Case(report=report("resolve", 1), submitted_by="alice")
        book._store.save_new(StoredCase(case=lost, submitted_by="alice", idempotency_key="k-1"), "alice",
                             "k-1", args_digest("submit", lost.report.model_dump(mode="json")))
        first = await book.submit(report("resolve", 1), "alice", "k-1")
        again = await book.submit(report("resolve", 1), "alice", "k-1")
        assert await book.drain(10) == 0
        return first.entry.case.case_id, first.created, again.created, book.get(lost.case_id).status.value

    case_id, created, created_again, status = asyncio.run(scenario())
    assert not created and not created_again and status == "resolved"
    assert CaseStore(State(state_url)).get(case_id).case.status == CaseStatus.resolved
