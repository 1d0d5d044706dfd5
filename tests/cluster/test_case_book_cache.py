"""A case book on a store holds only the open cases and the `case_cache` most recently finished
ones; the others are read back from the store, and lists, counts and submission keys answer
over every case exactly as a book that keeps everything in memory."""

from __future__ import annotations

import asyncio
import re
import threading

import pytest

from opsagent.agents.case import CaseStatus
from opsagent.cluster.case_book import CaseBook
from opsagent.cluster.case_query import CaseQuery, ReadScope
from opsagent.cluster.case_store import CaseStore
from opsagent.errors import CaseNotFound, CaseStateError, ConfigError, IdempotencyConflict
from tests.fakes.book_ports import DescribedPlanner, HoldingPolicy, ListTracer, held_registry, report

WORDS = ["resolve", "escalate", "hold", "resolve", "hold"]
CLASSES = ["weight_mismatch", "address_invalid", "customs_hold"]
SUBMITTERS = ["alice", "bob", None, "alice"]
N = 20


def _book(store=None, *, case_cache=1000, planner=None, policy=None) -> CaseBook:
    return CaseBook(planner or DescribedPlanner(), policy or HoldingPolicy(), executor=None,
                    tracer=ListTracer(), registry=held_registry(), store=store, case_cache=case_cache)


async def _populate(book: CaseBook) -> list:
    """N cases of mixed classes, submitters and outcomes, one at a time; half the held ones are
    then cancelled (final, having asked for an approval), the others still wait."""
    entries = []
    for i in range(N):
        submission = await book.submit(report(WORDS[i % 5], i, CLASSES[i % 3]), SUBMITTERS[i % 4],
                                       f"key-{i}")
        entries.append(submission.entry)
        await book.drain(5)
    for i, entry in enumerate(entries):
        if WORDS[i % 5] == "hold" and i % 2 == 0:
            await book.cancel(entry.case.case_id, "alice", "not needed")
    return entries


def _view(entry) -> tuple:
    """What a list shows of a case, without its random ids and times."""
    return (entry.case.report.description, entry.submitted_by, entry.case.status.value,
            bool(entry.approval_ids), re.sub(r"apr-\w+", "apr-?", entry.case.reason or ""))


QUERIES = [
    CaseQuery(),
    CaseQuery(status="resolved"),
    CaseQuery(status="awaiting_approval"),
    CaseQuery(status="escalated", limit=3),
    CaseQuery(exception_types=["address_invalid", "customs_hold"]),
    CaseQuery(exception_types=[]),
    CaseQuery(submitted_by="alice"),
    CaseQuery(submitted_by="nobody"),
    CaseQuery(with_approval=True),
    CaseQuery(with_approval=False, exception_types=["weight_mismatch"]),
    CaseQuery(readable_by=ReadScope(submitter="bob")),
    CaseQuery(readable_by=ReadScope(approvals=True)),
    CaseQuery(readable_by=ReadScope(submitter="alice", approvals=True)),
    CaseQuery(readable_by=ReadScope()),
    CaseQuery(readable_by=ReadScope(everything=True), status="escalated", offset=1, limit=2),
    CaseQuery(offset=4, limit=3),
    CaseQuery(offset=N + 5),
]


@pytest.fixture(scope="module")
def two_books(tmp_path_factory):
    """The same cases in a book on a store that holds 3 finished cases, and in one without a
    store (everything in memory); both quiet."""
    path = tmp_path_factory.mktemp("cache") / "cases.sqlite"

    async def scenario():
        small, everything = _book(CaseStore(path), case_cache=3), _book()
        return small, await _populate(small), everything, await _populate(everything)

    return asyncio.run(scenario())


def test_memory_holds_the_open_cases_and_case_cache_finished_ones(two_books):
    small, entries, everything, _ = two_books
    waiting = [e for e in entries if e.case.status == CaseStatus.awaiting_approval]
    assert waiting and len(waiting) < len(entries) - 3
    assert small.held() == len(waiting) + 3
    assert everything.held() == N
    assert small._keys == {} and small._cancelled == {}  # nothing else grows with the cases


def test_let_go_cases_read_back_as_they_were(two_books):
    small, entries, _, _ = two_books
    let_go = [e for e in entries if e.case.case_id not in small._entries]
    assert len(let_go) == N - small.held()
    for live in let_go:
        read = small.entry(live.case.case_id)
        assert read is not live  # from the store
        assert read.model_dump(mode="json") == live.model_dump(mode="json")
        assert small.get(live.case.case_id).model_dump(mode="json") == live.case.model_dump(mode="json")
    with pytest.raises(CaseNotFound):
        small.entry("case-nope")


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.model_dump_json(exclude_defaults=True))
def test_pages_over_the_store_match_a_book_that_keeps_everything(two_books, query):
    small, _, everything, _ = two_books
    ours, theirs = small.page(query), everything.page(query)
    assert ours.total == theirs.total
    assert [_view(e) for e in ours.items] == [_view(e) for e in theirs.items]
    assert (ours.offset, ours.limit) == (theirs.offset, theirs.limit)


def test_counts_classes_and_lists_cover_every_case(two_books):
    small, _, everything, _ = two_books
    assert small.counts() == everything.counts()
    assert sum(small.counts().values()) == N
    assert small.classes() == everything.classes() == sorted(CLASSES)
    for status in (None, "resolved", CaseStatus.awaiting_approval, "no-such-status"):
        ours = [c.report.description for c in small.list(status)]
        assert ours == [c.report.description for c in everything.list(status)]
    assert len(small.list()) == N


def test_submission_keys_answer_after_the_case_was_let_go_and_after_a_restart(tmp_path):
    async def scenario():
        book = _book(CaseStore(tmp_path / "cases.sqlite"), case_cache=1)
        first = (await book.submit(report("resolve", 0), "alice", "k")).entry
        for i in range(1, 4):
            await book.submit(report("escalate", i), "alice")
            await book.drain(5)
        assert first.case.case_id not in book._entries
        again = await book.submit(report("resolve", 0), "alice", "k")
        with pytest.raises(IdempotencyConflict, match="different exception"):
            await book.submit(report("resolve", 99), "alice", "k")
        other = await book.submit(report("resolve", 0), "bob", "k")
        await book.drain(5)
        restarted = _book(CaseStore(tmp_path / "cases.sqlite"), case_cache=1)
        after = await restarted.submit(report("resolve", 0), "alice", "k")
        with pytest.raises(IdempotencyConflict):
            await restarted.submit(report("escalate", 0), "alice", "k")
        return first, again, other, after, restarted

    first, again, other, after, restarted = asyncio.run(scenario())
    assert not again.created and again.entry.case.case_id == first.case.case_id
    assert again.entry.case.status == CaseStatus.resolved
    assert other.created and other.entry.case.case_id != first.case.case_id
    assert not after.created and after.entry.model_dump() == first.model_dump()
    assert restarted.held() == 1 and restarted.counts() == {"resolved": 2, "escalated": 3}


def test_concurrent_submissions_with_one_key_make_one_case(tmp_path):
    async def scenario():
        book = _book(CaseStore(tmp_path / "cases.sqlite"))
        both = await asyncio.gather(*(book.submit(report("resolve", 1), "alice", "same")
                                      for _ in range(2)))
        await book.drain(5)
        return both, book

    both, book = asyncio.run(scenario())
    assert sorted(s.created for s in both) == [False, True]
    assert both[0].entry.case.case_id == both[1].entry.case.case_id
    assert book.counts() == {"resolved": 1} and book._keys == {}


def test_a_restart_loads_the_open_cases_and_only_case_cache_finished_ones(tmp_path):
    path = tmp_path / "cases.sqlite"

    async def scenario():
        policy = HoldingPolicy()  # the approvals outlive the case manager
        first = _book(CaseStore(path), policy=policy)
        held = (await first.submit(report("hold", 0))).entry
        for i in range(1, 7):
            await first.submit(report("resolve", i))
        await first.drain(5)
        assert first.held() == 7
        second = _book(CaseStore(path), case_cache=2, policy=policy)
        await second.drain(5)
        return held, second

    held, second = asyncio.run(scenario())
    assert second.held() == 3  # the waiting case and the 2 most recent finished ones
    assert held.case.case_id in second._entries
    newest = [e.case.report.description for e in second._entries.values() if e.case.status.final]
    assert newest == ["resolve #5", "resolve #6"]
    assert second.counts() == {"awaiting_approval": 1, "resolved": 6}
    assert second.get(held.case.case_id).status == CaseStatus.awaiting_approval


def test_cancel_and_resume_of_a_let_go_case_answer_as_for_any_final_case(tmp_path):
    async def scenario():
        book = _book(CaseStore(tmp_path / "cases.sqlite"), case_cache=0)
        case_id = (await book.submit(report("resolve", 1), "alice")).entry.case.case_id
        await book.drain(5)
        assert book.held() == 0
        with pytest.raises(CaseStateError, match="already resolved"):
            await book.cancel(case_id, "alice")
        resumed = await book.resume(case_id)
        started = book.open_cases()
        for call in (book.cancel("case-nope", "alice"), book.resume("case-nope")):
            with pytest.raises(CaseNotFound):
                await call
        return resumed, started, book

    resumed, started, book = asyncio.run(scenario())
    assert resumed.status == CaseStatus.resolved and started == 0
    assert book.held() == 0


def test_a_reader_holding_a_case_while_it_finishes_and_is_let_go_keeps_its_final_state(tmp_path):
    async def scenario():
        planner = DescribedPlanner()
        book = _book(CaseStore(tmp_path / "cases.sqlite"), case_cache=0, planner=planner)
        case_id = (await book.submit(report("wait", 1), "alice")).entry.case.case_id
        while planner.calls == 0:
            await asyncio.sleep(0)
        reading = book.entry(case_id)
        planner.go.set()
        await book.drain(5)
        return reading, book.entry(case_id), book

    reading, read_back, book = asyncio.run(scenario())
    assert book.held() == 0 and read_back is not reading
    assert reading.case.status == CaseStatus.resolved
    assert read_back.model_dump(mode="json") == reading.model_dump(mode="json")


class _SlowCancelStore(CaseStore):
    """Holds the write of a cancel request (an open case with a canceller) until released."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.release, self.reached = threading.Event(), threading.Event()

    def save(self, stored) -> None:
        if stored.cancel_requested_by and not stored.case.status.final:
            self.reached.set()
            assert self.release.wait(10)
        super().save(stored)


def test_a_case_that_finishes_while_its_cancel_is_written_keeps_its_outcome(tmp_path):
    async def scenario():
        planner = DescribedPlanner()
        store = _SlowCancelStore(tmp_path / "cases.sqlite")
        book = _book(store, case_cache=0, planner=planner)
        case_id = (await book.submit(report("wait", 1), "alice")).entry.case.case_id
        while planner.calls == 0:  # the planning turn is under way: the cancel comes too late
            await asyncio.sleep(0)
        cancelling = asyncio.get_running_loop().create_task(book.cancel(case_id, "alice", "late"))
        await asyncio.to_thread(store.reached.wait, 10)
        planner.go.set()
        live = book._entries[case_id]
        while not live.case.status.final:
            await asyncio.sleep(0.01)
        store.release.set()
        cancelled = await cancelling
        await book.drain(5)
        return cancelled, book.entry(case_id), CaseStore(tmp_path / "cases.sqlite").get(case_id), book

    cancelled, read, stored, book = asyncio.run(scenario())
    assert cancelled.case.status == read.case.status == stored.case.status == CaseStatus.resolved
    assert read.cancel_requested_by == "alice" and read.case.reason == "resolve as told"
    assert book.held() == 0


def test_without_a_store_every_case_stays(tmp_path):
    async def scenario():
        book = _book(case_cache=0)
        for i in range(4):
            await book.submit(report("resolve", i), "alice", f"k{i}")
        await book.drain(5)
        return book

    book = asyncio.run(scenario())
    assert book.held() == 4 and len(book._keys) == 4
    assert book.page(CaseQuery()).total == 4


def test_a_negative_case_cache_is_refused():
    with pytest.raises(ConfigError, match="case_cache"):
        _book(case_cache=-1)

