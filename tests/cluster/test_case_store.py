"""The case store on its own, on SQLite and PostgreSQL: lists and counts as SQL on indexed
columns, key look-ups, loading only what a case book holds, one case per submission key and one
case manager resuming the open cases however many race for them."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from opsagent.agents.case import Case, CaseStatus, Step
from opsagent.cluster.case_query import CaseQuery, ReadScope
from opsagent.cluster.case_store import CaseStore, StoredCase
from opsagent.errors import StateError
from opsagent.policy.state import State
from tests.fakes.book_ports import report

def _stored(n: int, status: CaseStatus, kind: str = "weight_mismatch", by: str | None = "alice",
            approval: bool = False) -> StoredCase:
    steps = [Step(step=1, tool="adjust", approval_id=f"apr-{n}")] if approval else []
    return StoredCase(case=Case(report=report("x", n, kind), status=status, steps=steps),
                      submitted_by=by, idempotency_key=f"k{n}")


def test_a_cases_file_from_before_the_state_layer_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "cases.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE cases (case_id TEXT PRIMARY KEY, seq INTEGER, entry TEXT)")
    db.execute("INSERT INTO cases VALUES ('c1', 1, '{}')")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="no schema version.*Nothing was changed"):
        CaseStore(path)
    assert sqlite3.connect(path).execute("SELECT * FROM cases").fetchall() == [("c1", 1, "{}")]


def test_load_takes_the_open_cases_and_the_most_recent_final_ones(state_url):
    store = CaseStore(state_url)
    statuses = [CaseStatus.resolved, CaseStatus.planning, CaseStatus.escalated, CaseStatus.failed,
                CaseStatus.awaiting_approval, CaseStatus.resolved]
    for n, status in enumerate(statuses):
        store.save(_stored(n, status))
    described = lambda cases: [s.case.report.description for s in cases]  # noqa: E731
    assert described(store.load()) == [f"x #{n}" for n in range(6)]
    assert described(store.load(recent_final=2)) == ["x #1", "x #3", "x #4", "x #5"]
    assert described(store.load(recent_final=0)) == ["x #1", "x #4"]


def test_saving_again_keeps_the_order_and_updates_the_columns(state_url):
    store = CaseStore(state_url)
    first, second = _stored(1, CaseStatus.planning), _stored(2, CaseStatus.received)
    store.save(first)
    store.save(second)
    assert store.page(CaseQuery(with_approval=True))[1] == 0
    held = first.model_copy(update={"case": first.case.model_copy(update={
        "status": CaseStatus.awaiting_approval, "steps": [Step(step=1, tool="adjust", approval_id="apr-1")]})})
    store.save(held)
    page, total = store.page(CaseQuery(with_approval=True))
    assert total == 1 and page[0].case.status == CaseStatus.awaiting_approval
    assert [s.case.case_id for s in store.page(CaseQuery())[0]] == [second.case.case_id, first.case.case_id]
    assert store.get(first.case.case_id) == held and store.get("case-nope") is None
    assert store.key("alice", "nope") is None


def test_the_query_planner_uses_the_indexes(tmp_path):
    store = CaseStore(tmp_path / "cases.sqlite")
    db = sqlite3.connect(store.path)
    for column, value in (("exception_type", "'x'"), ("submitted_by", "'alice'"), ("status", "'resolved'")):
        plan = " ".join(str(r) for r in db.execute(
            f"EXPLAIN QUERY PLAN SELECT entry FROM cases WHERE {column} = {value} ORDER BY seq DESC"))
        assert "USING INDEX" in plan, plan


def test_pages_filter_on_every_column_and_scope(state_url):
    store = CaseStore(state_url)
    cases = [_stored(1, CaseStatus.resolved), _stored(2, CaseStatus.awaiting_approval, "address_invalid",
                                                      "bob", approval=True),
             _stored(3, CaseStatus.escalated, "customs_hold", None)]
    for stored in cases:
        store.save(stored)
    ids = [c.case.case_id for c in cases]
    assert store.classes() == ["address_invalid", "customs_hold", "weight_mismatch"]
    assert store.counts() == {"resolved": 1, "awaiting_approval": 1, "escalated": 1}
    ask = lambda **kw: [s.case.case_id for s in store.page(CaseQuery(**kw))[0]]  # noqa: E731
    assert ask(readable_by=ReadScope(approvals=True)) == [ids[1]]
    assert ask(readable_by=ReadScope(submitter="alice", approvals=True)) == [ids[1], ids[0]]
    assert ask(readable_by=ReadScope()) == [] and ask(case_ids=[]) == [] and ask(exception_types=[]) == []
    assert ask(readable_by=ReadScope(everything=True)) == ids[::-1]
    assert ask(status=CaseStatus.escalated) == [ids[2]] and ask(submitted_by="bob") == [ids[1]]
    assert ask(exception_types=["customs_hold", "weight_mismatch"]) == [ids[2], ids[0]]
    assert ask(case_ids=[ids[0], "nope"]) == [ids[0]] and ask(with_approval=False, limit=1, offset=1) == [ids[0]]
    assert store.page(CaseQuery(limit=1))[1] == 3
    assert [c.case_id for c in store.with_status("resolved")] == [ids[0]]


def test_two_case_managers_taking_one_key_at_once_store_one_case(state_url):
    """Idempotent submissions across managers: the key is the primary key of submission_keys."""
    managers = [CaseStore(State(state_url)) for _ in range(4)]
    barrier = threading.Barrier(len(managers))
    answers: list[tuple[str, str] | None] = [None] * len(managers)
    tries = [_stored(10 + i, CaseStatus.received) for i in range(len(managers))]

    def submit(i: int) -> None:
        barrier.wait()
        answers[i] = managers[i].save_new(tries[i], "alice", "same-key", "digest-1")

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(managers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = managers[0].load()
    assert len(stored) == 1 and answers.count(None) == 1  # one stored it, the others were answered
    winner = stored[0].case.case_id
    assert all(a == (winner, "digest-1") for a in answers if a is not None)
    assert managers[1].key("alice", "same-key") == (winner, "digest-1")
    for manager in managers:
        manager.db.close()


def test_one_case_manager_holds_the_lease_and_a_lapsed_one_is_taken_over(state_url):
    first, second = CaseStore(State(state_url)), CaseStore(State(state_url))
    assert first.take_lease("cm-1", 30, now=1000).owner == "cm-1"
    assert second.take_lease("cm-2", 30, now=1010).owner == "cm-1"  # the first is alive: wait
    assert first.take_lease("cm-1", 30, now=1020).until == 1050  # renewed
    assert second.take_lease("cm-2", 30, now=1051).owner == "cm-2"  # lapsed: taken over
    assert not first.release_lease("cm-1") and second.release_lease("cm-2")
