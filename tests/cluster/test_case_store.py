"""The case store on its own: lists and counts as SQL on indexed columns, key look-ups, loading
only what a case book holds, and a file of the first schema migrated when opened."""

from __future__ import annotations

import sqlite3

import pytest

from opsagent.agents.case import Case, CaseStatus, Step
from opsagent.cluster.case_query import CaseQuery, ReadScope
from opsagent.cluster.case_store import CaseStore, StoredCase
from opsagent.errors import CaseStoreError
from tests.fakes.book_ports import report

# cases.sqlite as the first durable case manager wrote it (before the indexed columns)
OLD_SCHEMA = """
CREATE TABLE cases (case_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, status TEXT NOT NULL,
                    final INTEGER NOT NULL, entry TEXT NOT NULL);
CREATE TABLE submission_keys (submitter TEXT NOT NULL, key TEXT NOT NULL, case_id TEXT NOT NULL,
                              digest TEXT NOT NULL, PRIMARY KEY (submitter, key));
CREATE INDEX cases_open ON cases (final, seq);
"""


def _stored(n: int, status: CaseStatus, kind: str = "weight_mismatch", by: str | None = "alice",
            approval: bool = False) -> StoredCase:
    steps = [Step(step=1, tool="adjust", approval_id=f"apr-{n}")] if approval else []
    return StoredCase(case=Case(report=report("x", n, kind), status=status, steps=steps),
                      submitted_by=by, idempotency_key=f"k{n}")


def _old_file(path, cases: list[StoredCase]) -> None:
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    for seq, stored in enumerate(cases, 1):
        case = stored.case
        db.execute("INSERT INTO cases VALUES (?, ?, ?, ?, ?)",
                   (case.case_id, seq, case.status.value, int(case.status.final), stored.model_dump_json()))
    db.execute("INSERT INTO submission_keys VALUES ('alice', 'k1', ?, 'digest-1')", (cases[0].case.case_id,))
    db.commit()
    db.close()


def test_a_file_of_the_first_schema_is_migrated_when_opened(tmp_path):
    path = tmp_path / "cases.sqlite"
    cases = [_stored(1, CaseStatus.resolved), _stored(2, CaseStatus.awaiting_approval, "address_invalid",
                                                       "bob", approval=True),
             _stored(3, CaseStatus.escalated, "customs_hold", None)]
    _old_file(path, cases)
    store = CaseStore(path)
    columns = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(cases)")}
    assert {"exception_type", "submitted_by", "has_approval"} <= columns
    assert store.classes() == ["address_invalid", "customs_hold", "weight_mismatch"]
    assert store.counts() == {"resolved": 1, "awaiting_approval": 1, "escalated": 1}
    page, total = store.page(CaseQuery(readable_by=ReadScope(approvals=True)))
    assert total == 1 and page[0].case.case_id == cases[1].case.case_id
    page, total = store.page(CaseQuery(submitted_by="alice"))
    assert [s.case.case_id for s in page] == [cases[0].case.case_id] and total == 1
    assert store.key("alice", "k1") == (cases[0].case.case_id, "digest-1")
    store.save(_stored(4, CaseStatus.received, "weight_mismatch", "bob"))  # goes on after the old rows
    assert [s.case.report.description for s in store.load()] == ["x #1", "x #2", "x #3", "x #4"]
    store.close()
    reopened = CaseStore(path)  # already migrated: opens as is
    assert reopened.counts() == {"resolved": 1, "awaiting_approval": 1, "escalated": 1, "received": 1}


def test_a_file_that_fails_its_migration_is_left_as_it_was(tmp_path):
    path = tmp_path / "cases.sqlite"
    _old_file(path, [_stored(1, CaseStatus.resolved)])
    db = sqlite3.connect(path)
    db.execute("UPDATE cases SET entry = '{\"not\": \"a case\"}'")
    db.commit()
    db.close()
    with pytest.raises(CaseStoreError, match="cannot be read to fill the new columns"):
        CaseStore(path)
    columns = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(cases)")}
    assert "exception_type" not in columns  # rolled back: fix the row, open again


def test_load_takes_the_open_cases_and_the_most_recent_final_ones(tmp_path):
    store = CaseStore(tmp_path / "cases.sqlite")
    statuses = [CaseStatus.resolved, CaseStatus.planning, CaseStatus.escalated, CaseStatus.failed,
                CaseStatus.awaiting_approval, CaseStatus.resolved]
    for n, status in enumerate(statuses):
        store.save(_stored(n, status))
    described = lambda cases: [s.case.report.description for s in cases]  # noqa: E731
    assert described(store.load()) == [f"x #{n}" for n in range(6)]
    assert described(store.load(recent_final=2)) == ["x #1", "x #3", "x #4", "x #5"]
    assert described(store.load(recent_final=0)) == ["x #1", "x #4"]


def test_saving_again_keeps_the_order_and_updates_the_columns(tmp_path):
    store = CaseStore(tmp_path / "cases.sqlite")
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
