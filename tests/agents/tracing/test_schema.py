"""The schema is documented (SCHEMA.md matches the records) and versioned: files written before a
column existed still read through the views, next to files that have it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from opsagent.agents.tracing import RECORD_TYPES, SCHEMA_VERSION, CaseEvent, TraceWriter, query
from opsagent.agents.tracing.records import _json_fields

SCHEMA_MD = Path(__file__).resolve().parents[3] / "agents" / "tracing" / "SCHEMA.md"
T0 = datetime(2025, 3, 1, 9, tzinfo=timezone.utc)


def _columns_markdown(cls) -> str:
    lines = [f"### `{cls.table}` ({cls.__name__}, partitioned by `{cls.partition_by}`)", "",
             "| column | type | null | description |", "|---|---|---|---|"]
    for field in cls.arrow_schema():
        info = cls.model_fields.get(field.name)
        description = info.description if info else "The writer's schema version (the views show 1 for older files)."
        kind = "json text" if field.name in _json_fields(cls) else str(field.type)
        lines.append(f"| {field.name} | {kind} | {'yes' if field.nullable else 'no'} | {description} |")
    return "\n".join(lines) + "\n"


def test_schema_md_documents_every_column_of_every_table() -> None:
    text = SCHEMA_MD.read_text()
    for cls in RECORD_TYPES:
        expected = _columns_markdown(cls)
        assert expected in text, f"SCHEMA.md is stale for {cls.table}; the section should read:\n{expected}"
    assert text.startswith(f"# The trace schema (version {SCHEMA_VERSION})")
    assert f"\n| {SCHEMA_VERSION} |" in text


def _v1_case(case_id: str, status: str, at: datetime) -> dict:
    """A row as version 1 wrote it: no event_id, no schema_version."""
    row = CaseEvent(case_id=case_id, exception_type="weight_mismatch", status=status, description="d",
                    entities={"shipment_id": "SHP-1"}, received_at=T0, recorded_at=at).to_row()
    del row["event_id"], row["schema_version"]
    return row


def _write_v1(root: Path, rows: list[dict]) -> Path:
    current = CaseEvent.arrow_schema()
    schema = pa.schema([f for f in current if f.name not in ("event_id", "schema_version")],
                       metadata={"opsagent.table": "case_events"})
    folder = root / "case_events" / "date=2025-03-01"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "part-old.parquet")
    return folder / "part-old.parquet"


def test_files_without_the_newer_columns_read_next_to_current_ones(tmp_path: Path) -> None:
    old = _write_v1(tmp_path, [_v1_case("C-1", "received", T0), _v1_case("C-1", "received", T0),
                               _v1_case("C-2", "received", T0)])
    assert "event_id" not in pq.read_schema(old).names
    with TraceWriter(tmp_path) as writer:
        writer.export([CaseEvent(case_id="C-1", exception_type="weight_mismatch", status="resolved",
                                 description="d", entities={}, received_at=T0,
                                 recorded_at=T0 + timedelta(minutes=1), finished_at=T0 + timedelta(minutes=1))])
    rows = query(tmp_path, "SELECT schema_version, event_id IS NULL AS old, count(*) FROM case_events "
                           "GROUP BY ALL ORDER BY 1")[1]
    assert rows == [(1, True, 3), (SCHEMA_VERSION, False, 1)]  # two identical old rows stay two rows
    assert query(tmp_path, "SELECT case_id, status FROM cases ORDER BY 1")[1] == [("C-1", "resolved"),
                                                                               ("C-2", "received")]
    columns, values = query(tmp_path, "SELECT * FROM case_events WHERE schema_version = 1 LIMIT 1")
    event = CaseEvent.from_row(dict(zip(columns, values[0], strict=True)))
    assert event.case_id in ("C-1", "C-2") and len(event.event_id) == 32


def test_a_column_added_later_shows_up_and_older_rows_have_it_null(tmp_path: Path) -> None:
    """What the next version will do: add a nullable column; this reader still works."""
    _write_v1(tmp_path, [_v1_case("C-1", "received", T0)])
    row = CaseEvent(case_id="C-2", exception_type="weight_mismatch", status="received", description="d",
                    entities={}, received_at=T0, recorded_at=T0).to_row() | {"priority": "high"}
    folder = tmp_path / "case_events" / "date=2025-03-01"
    pq.write_table(pa.Table.from_pylist([row]), folder / "part-new.parquet")
    assert query(tmp_path, "SELECT case_id, priority FROM case_events ORDER BY 1")[1] == [
        ("C-1", None), ("C-2", "high")]
    assert query(tmp_path, "SELECT count(*) FROM events")[1] == [(2,)]


def test_planner_calls_written_before_choice_decoding_read_with_the_new_columns_null(tmp_path: Path) -> None:
    """Version 6 files (no `decided_by`, no `candidates`) read beside version 7 ones, and a
    version 6 row still rebuilds into a record (replay reads old traces)."""
    from opsagent.agents.tracing.records import PlannerCallEvent

    def call(case_id: str, **extra) -> PlannerCallEvent:
        return PlannerCallEvent(case_id=case_id, step=1, model="m", prompt_digest="d", prompt_tokens=10,
                                completion_tokens=5, output='{"tool":"finish"}', finish_reason="stop",
                                started_at=T0, finished_at=T0, duration_ms=1.0, **extra)

    old = call("C-6").to_row()
    old = {k: v for k, v in old.items() if k not in ("decided_by", "candidates")} | {"schema_version": 6}
    folder = tmp_path / "planner_calls" / "date=2025-03-01"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([old]), folder / "part-v6.parquet")
    with TraceWriter(tmp_path) as writer:
        writer.export([call("C-7", decided_by="model", candidates=[{"decision": "finish:resolved",
                                                                    "probability": 1.0}])])
    columns, rows = query(tmp_path, "SELECT case_id, schema_version, decided_by, candidates FROM planner_calls "
                                    "ORDER BY 1")
    assert [r[:3] for r in rows] == [("C-6", 6, None), ("C-7", SCHEMA_VERSION, "model")]
    assert rows[0][3] is None and "finish:resolved" in rows[1][3]
    _, values = query(tmp_path, "SELECT * FROM planner_calls WHERE case_id = 'C-6'")
    cols, _ = query(tmp_path, "SELECT * FROM planner_calls LIMIT 0")
    event = PlannerCallEvent.from_row(dict(zip(cols, values[0], strict=True)))
    assert event.decided_by is None and event.candidates is None and event.output == '{"tool":"finish"}'


def test_demo_summary_counts_model_calls_not_rule_steps(tmp_path: Path) -> None:
    from opsagent.agents.tracing.records import PlannerCallEvent
    from opsagent.agents.tracing.report import demo_summary

    def call(decided_by: str, ms: float) -> PlannerCallEvent:
        return PlannerCallEvent(case_id="C-1", step=1, model="m" if decided_by == "model" else "rule",
                                prompt_digest="d", prompt_tokens=100, completion_tokens=0,
                                output="{}", finish_reason="stop", started_at=T0, finished_at=T0,
                                duration_ms=ms, decided_by=decided_by)

    with TraceWriter(tmp_path) as writer:
        writer.export([CaseEvent(case_id="C-1", exception_type="weight_mismatch", status="resolved",
                                 description="d", entities={}, received_at=T0, recorded_at=T0,
                                 finished_at=T0 + timedelta(seconds=2)),
                       call("model", 700.0), call("model", 900.0), call("rule", 0.0)])
    text = demo_summary(tmp_path, ["C-1"])
    row = text.split("model calls")[1].splitlines()[3].split()
    assert row[0] == "2" and row[1] == "200" and row[-1] == "800", text
