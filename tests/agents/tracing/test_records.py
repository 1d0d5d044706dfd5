from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pytest
from pydantic import ValidationError

from opsagent.agents.tracing import RECORD_TYPES, ActionEvent, CaseEvent, PlannerCallEvent
from opsagent.agents.tracing.records import SCHEMA_VERSION

T0 = datetime(2025, 3, 1, 23, 30, tzinfo=timezone.utc)


def test_tables_are_distinct_and_every_field_is_described() -> None:
    assert [c.table for c in RECORD_TYPES] == ["case_events", "actions", "planner_calls", "approvals", "verdicts"]
    for cls in RECORD_TYPES:
        assert all(f.description for f in cls.model_fields.values()), cls


def test_schema_is_derived_from_fields() -> None:
    schema = ActionEvent.arrow_schema()
    assert schema.names == [*ActionEvent.model_fields, "schema_version"]
    assert schema.names[0] == "event_id" and not schema.field("event_id").nullable
    assert schema.metadata[b"opsagent.schema_version"] == str(SCHEMA_VERSION).encode()
    assert schema.field("step").type == pa.int64()
    assert schema.field("executed").type == pa.bool_()
    assert schema.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert not schema.field("started_at").nullable and schema.field("finished_at").nullable
    for json_column in ("args", "reasons", "result"):
        assert schema.field(json_column).type == pa.string()
    assert PlannerCallEvent.arrow_schema().field("duration_ms").type == pa.float64()
    assert ActionEvent.arrow_schema() is ActionEvent.arrow_schema()  # derived once


def _case(**kw) -> CaseEvent:
    fields = dict(
        case_id="C-1", exception_type="weight_mismatch", status="received", description="d",
        entities={"shipment_id": "SHP-1"}, received_at=T0, recorded_at=T0,
    )
    return CaseEvent(**(fields | kw))


def test_naive_datetimes_are_rejected_and_others_normalised_to_utc() -> None:
    with pytest.raises(ValidationError, match="timezone-aware"):
        _case(received_at=datetime(2025, 3, 1, 12))
    event = _case(received_at=datetime(2025, 3, 2, 1, 30, tzinfo=timezone(timedelta(hours=2))))
    assert event.received_at == T0 and event.received_at.utcoffset() == timedelta(0)


def test_partition_date_is_utc_date_of_main_timestamp() -> None:
    local = datetime(2025, 3, 2, 0, 30, tzinfo=timezone(timedelta(hours=1)))  # 23:30 UTC on the 1st
    assert _case(recorded_at=local).partition_date() == "2025-03-01"


def test_row_round_trip() -> None:
    event = ActionEvent(
        case_id="C-1", step=2, tool="t", args={"b": 1, "a": [1, 2]}, risk=None, decision="deny",
        reasons=["no"], writes=False, executed=False, dry_run=False, result={"x": T0}, started_at=T0,
        policy_version="v", args_digest="d",
    )
    row = event.to_row()
    assert row["args"] == '{"a": [1, 2], "b": 1}' and row["result"] == '{"x": "2025-03-01T23:30:00Z"}'
    assert row["error"] is None and row["started_at"] == T0
    assert row["event_id"] == event.event_id and row["schema_version"] == SCHEMA_VERSION
    back = ActionEvent.from_row(row | {"date": "2025-03-01"})
    assert back.event_id == event.event_id
    # every field comes back as it went in, except the result's datetime: JSON keeps its ISO text
    assert back.result == {"x": "2025-03-01T23:30:00Z"}
    assert back.model_dump(exclude={"result"}) == event.model_dump(exclude={"result"})


def test_every_record_has_its_own_event_id_and_a_copy_is_a_new_record() -> None:
    first, second = _case(), _case()
    assert len(first.event_id) == 32 and first.event_id != second.event_id
    assert first.model_copy(update={"status": "planning"}).event_id != first.event_id
    assert first.model_copy(update={"event_id": "same"}).event_id == "same"


def test_row_of_a_file_older_than_a_column_takes_the_default() -> None:
    row = _case().to_row()
    del row["event_id"], row["schema_version"]
    assert len(CaseEvent.from_row(row).event_id) == 32
    assert len(CaseEvent.from_row(row | {"event_id": None}).event_id) == 32
