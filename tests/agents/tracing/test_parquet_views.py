"""Records through ParquetExporter, read back through the DuckDB views."""

from __future__ import annotations

import json
import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from opsagent.agents.tracing import (
    ActionEvent,
    ApprovalEvent,
    CaseEvent,
    FanoutExporter,
    InMemoryExporter,
    ParquetExporter,
    PlannerCallEvent,
    TraceExporter,
    connect,
    create_views,
    query,
)
from opsagent.errors import TraceError

T0 = datetime(2025, 3, 1, 9, 0, 0, 123456, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)


def case_event(status: str, at: datetime, **kw) -> CaseEvent:
    fields = dict(
        case_id="C-1", exception_type="weight_mismatch", status=status, description="billed 40kg, scanned 12kg",
        entities={"shipment_id": "SHP-1", "carrier": "ACME"}, received_at=T0, recorded_at=at,
    )
    return CaseEvent(**(fields | kw))


ACTION = ActionEvent(
    case_id="C-1", step=1, tool="tms_open_weight_dispute",
    args={"shipment_id": "SHP-1", "claimed_weight_kg": 12.5, "reason": "scan"}, risk="low", decision="allow",
    reasons=["tms_open_weight_dispute is low risk"], writes=True, executed=True, dry_run=False,
    result={"dispute_id": "D-9", "status": "open"}, error=None, started_at=T0, finished_at=T0 + MIN,
    policy_version="a37860a09e4f", args_digest="ab" * 32,
)
PLANNER = PlannerCallEvent(
    case_id="C-1", step=1, model="smollm2", prompt_digest="cd" * 32, prompt_tokens=812, completion_tokens=41,
    output='{"tool": "tms_open_weight_dispute"}', finish_reason="stop", started_at=T0, finished_at=T0 + MIN,
    duration_ms=1234.5,
)


def approval(status: str, at: datetime, **kw) -> ApprovalEvent:
    fields = dict(
        approval_id="A-1", case_id="C-1", step=2, tool="tms_adjust_billed_weight",
        args={"shipment_id": "SHP-1", "billed_weight_kg": 12.5, "reason": "r"}, args_digest="ef" * 32,
        status=status, requested_at=T0, recorded_at=at,
    )
    return ApprovalEvent(**(fields | kw))


def rows(root: Path, sql: str) -> list[dict]:
    columns, values = query(root, sql)
    return [dict(zip(columns, row, strict=True)) for row in values]


def test_round_trip_of_every_record_type(tmp_path: Path) -> None:
    done = approval("approved", T0 + 2 * MIN, decided_at=T0 + 2 * MIN, approver="ops@example.com", reason="ok")
    events = [case_event("received", T0), ACTION, PLANNER, done]
    with ParquetExporter(tmp_path) as exporter:
        exporter.export(events)

    for event, view in zip(events, ["case_events", "actions", "planner_calls", "approvals"], strict=True):
        (row,) = rows(tmp_path, f"SELECT * FROM {view}")
        assert row["date"] == date(2025, 3, 1)
        assert type(event).from_row(row) == event

    (action,) = rows(tmp_path, "SELECT * FROM actions")
    assert json.loads(action["args"]) == ACTION.args and json.loads(action["reasons"]) == ACTION.reasons
    assert action["started_at"] == T0  # microseconds and UTC survive
    assert action["finished_at"].utcoffset() == timedelta(0)
    _, [(shipment, weight)] = query(
        tmp_path, "SELECT json_extract_string(args, '$.shipment_id'), args->>'claimed_weight_kg' FROM actions"
    )
    assert (shipment, weight) == ("SHP-1", "12.5")


def test_cases_and_approvals_show_the_latest_row(tmp_path: Path) -> None:
    exporter = ParquetExporter(tmp_path)
    exporter.export([case_event("received", T0), case_event("planning", T0 + MIN)])
    exporter.flush()
    exporter.export([
        case_event("resolved", T0 + 3 * MIN, finished_at=T0 + 3 * MIN),
        case_event("executing", T0 + 2 * MIN),
        case_event("escalated", T0, case_id="C-2", reason="carrier unreachable"),
        approval("pending", T0),
        approval("approved", T0 + MIN, decided_at=T0 + MIN, approver="ops"),
    ])
    exporter.close()
    cases = rows(tmp_path, "SELECT case_id, status, finished_at, reason, received_at FROM cases ORDER BY case_id")
    assert cases == [
        {"case_id": "C-1", "status": "resolved", "finished_at": T0 + 3 * MIN, "reason": None, "received_at": T0},
        {"case_id": "C-2", "status": "escalated", "finished_at": None, "reason": "carrier unreachable",
         "received_at": T0},
    ]
    assert rows(tmp_path, "SELECT status, approver FROM approvals") == [{"status": "approved", "approver": "ops"}]
    assert query(tmp_path, "SELECT count(*) FROM approval_events")[1] == [(2,)]


EXPECTED_COLUMNS = {
    "case_events": list(CaseEvent.model_fields) + ["schema_version", "date"],
    "cases": list(CaseEvent.model_fields) + ["schema_version", "date"],
    "actions": list(ActionEvent.model_fields) + ["schema_version", "date"],
    "planner_calls": list(PlannerCallEvent.model_fields) + ["schema_version", "date"],
    "approvals": list(ApprovalEvent.model_fields) + ["schema_version", "date"],
    "approval_events": list(ApprovalEvent.model_fields) + ["schema_version", "date"],
    "events": ["case_id", "ts", "kind", "step", "summary", "event_id"],
}


@pytest.mark.parametrize("view", EXPECTED_COLUMNS)
def test_fresh_folder_has_empty_views_with_columns(tmp_path: Path, view: str) -> None:
    assert query(tmp_path / "never-written", f"SELECT * FROM {view}") == (EXPECTED_COLUMNS[view], [])


def test_views_mix_tables_with_and_without_files(tmp_path: Path) -> None:
    with ParquetExporter(tmp_path) as exporter:
        exporter.export([ACTION])
    sql = "SELECT a.tool, p.model FROM actions a LEFT JOIN planner_calls p USING (case_id, step)"
    assert query(tmp_path, sql) == (["tool", "model"], [("tms_open_weight_dispute", None)])
    assert query(tmp_path, "SELECT sum(duration_ms) FROM planner_calls")[1] == [(None,)]


def test_files_are_partitioned_by_utc_date_and_no_temp_files_remain(tmp_path: Path) -> None:
    day2 = T0 + timedelta(days=1)
    exporter = ParquetExporter(tmp_path)
    next_day = ACTION.model_copy(update={"started_at": day2, "step": 2})
    exporter.export([ACTION, next_day, case_event("received", T0)])
    written = exporter.flush()
    files = sorted(p.relative_to(tmp_path).parent.as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["actions/date=2025-03-01", "actions/date=2025-03-02", "case_events/date=2025-03-01"]
    assert sorted(written) == sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert all(p.name.startswith("part-") and p.suffix == ".parquet" for p in written)
    assert query(tmp_path, "SELECT step, date FROM actions ORDER BY step")[1] == [
        (1, date(2025, 3, 1)),
        (2, date(2025, 3, 2)),
    ]


def test_empty_flush_writes_nothing(tmp_path: Path) -> None:
    exporter = ParquetExporter(tmp_path / "traces")
    assert exporter.flush() == []
    exporter.close()
    assert not (tmp_path / "traces").exists()


def test_buffer_flushes_at_max_buffer(tmp_path: Path) -> None:
    exporter = ParquetExporter(tmp_path, max_buffer=3)
    exporter.export([ACTION, ACTION])
    assert exporter.buffered == 2 and not list(tmp_path.rglob("*.parquet"))
    exporter.export([PLANNER])
    assert exporter.buffered == 0 and len(list(tmp_path.rglob("*.parquet"))) == 2


def test_each_flush_adds_a_file_and_readers_see_all(tmp_path: Path) -> None:
    exporter = ParquetExporter(tmp_path)
    for step in range(3):
        exporter.export([ACTION.model_copy(update={"step": step})])
        exporter.flush()
    assert len(list((tmp_path / "actions").rglob("*.parquet"))) == 3
    assert query(tmp_path, "SELECT count(*) FROM actions")[1] == [(3,)]


def test_concurrent_exports_lose_nothing(tmp_path: Path) -> None:
    exporter = ParquetExporter(tmp_path, max_buffer=7)

    def work(worker: int) -> None:
        for step in range(50):
            exporter.export([ACTION.model_copy(update={"step": worker * 100 + step})])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    exporter.close()
    assert query(tmp_path, "SELECT count(DISTINCT step) FROM actions")[1] == [(200,)]


def test_write_failure_raises_trace_error_and_keeps_the_buffer(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    exporter = ParquetExporter(blocker)
    exporter.export([ACTION])
    with pytest.raises(TraceError, match="cannot write actions"):
        exporter.flush()
    assert exporter.buffered == 1


def test_export_after_close_raises(tmp_path: Path) -> None:
    exporter = ParquetExporter(tmp_path)
    exporter.close()
    with pytest.raises(TraceError, match="closed"):
        exporter.export([ACTION])


def test_bad_sql_raises_trace_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="syntax error"):
        query(tmp_path, "SELEC * FROM actions")
    with pytest.raises(TraceError, match="no_such_table"):
        query(tmp_path, "SELECT * FROM no_such_table")


def test_create_views_again_picks_up_new_tables(tmp_path: Path) -> None:
    con = connect(tmp_path)
    try:
        assert con.execute("SELECT count(*) FROM actions").fetchall() == [(0,)]
        with ParquetExporter(tmp_path) as exporter:
            exporter.export([ACTION])
        create_views(con, tmp_path)
        assert con.execute("SELECT count(*) FROM actions").fetchall() == [(1,)]
    finally:
        con.close()


class _Broken(TraceExporter):
    def export(self, events) -> None:
        raise OSError("disk full")

    def flush(self) -> None: ...

    def close(self) -> None: ...


def test_fanout_reaches_every_exporter_and_reports_failures() -> None:
    first, last = InMemoryExporter(), InMemoryExporter()
    fanout = FanoutExporter([first, _Broken(), last])
    with pytest.raises(TraceError, match="_Broken: disk full"):
        fanout.export([ACTION])
    assert first.events == [ACTION] and last.of_type(ActionEvent) == [ACTION]
    fanout.close()
    assert first.closed and last.closed
    with pytest.raises(TraceError):
        first.export([PLANNER])
