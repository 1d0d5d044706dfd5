"""The OTLP exporter with the official OTLP/HTTP exporter against a local receiver (decoded with
opentelemetry-proto): span names, case > step > children, and ids that are the Parquet trace's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opsagent.agents.tracing.exporters import FanoutExporter
from opsagent.agents.tracing.otlp import OtlpConfig, OtlpExporter, trace_id_of
from opsagent.agents.tracing.parquet import ParquetExporter
from opsagent.agents.tracing.records import ActionEvent, ApprovalEvent, CaseEvent, PlannerCallEvent
from opsagent.agents.tracing.views import query
from tests.fakes.otlp_receiver import OtlpReceiver

T0 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _case(status: str, at: float, **kw) -> CaseEvent:
    return CaseEvent(case_id="case-otlp1", exception_type="weight_mismatch", status=status, description="d",
                     entities={"shipment_id": "SHP-1"}, received_at=T0, recorded_at=_at(at), **kw)


def _plan(step: int, at: float) -> PlannerCallEvent:
    return PlannerCallEvent(case_id="case-otlp1", step=step, model="m", prompt_digest="p", prompt_tokens=90,
                            completion_tokens=7, output="{}", finish_reason="stop", started_at=_at(at),
                            finished_at=_at(at + 0.5), duration_ms=500.0, decided_by="model", confidence=0.9)


def _action(step: int, at: float, **kw) -> ActionEvent:
    base = dict(case_id="case-otlp1", step=step, tool="wms_get_shipment", args={"shipment_id": "SHP-1"},
                risk="low", decision="allow", reasons=["low risk"], writes=False, executed=True,
                dry_run=False, started_at=_at(at), finished_at=_at(at + 0.2), policy_version="v1",
                args_digest="a" * 64)
    return ActionEvent(**{**base, **kw})


def _events() -> list:
    held = dict(tool="tms_adjust_billed_weight", risk="high", decision="require_approval", writes=True,
                executed=False, dry_run=True, reasons=["needs approval"])
    approval = dict(approval_id="apr-1", case_id="case-otlp1", step=2, tool="tms_adjust_billed_weight",
                    args={}, args_digest="b" * 64, requested_at=_at(3.0))
    return [
        _case("received", 0), _case("planning", 0.1), _plan(1, 0.1), _action(1, 1.0),
        _plan(2, 2.0), _action(2, 3.0, **held), ApprovalEvent(status="pending", recorded_at=_at(3.1), **approval),
        _case("awaiting_approval", 3.2),
        ApprovalEvent(status="approved", decided_at=_at(60), approver="alice", recorded_at=_at(60), **approval),
        _action(2, 60.5, **{**held, "decision": "allow", "executed": True, "dry_run": False,
                            "error": "HTTP 503: try later"}),
        _plan(3, 62.0), _case("resolved", 63.0, finished_at=_at(63.0)),
    ]


def test_spans_follow_the_case_and_carry_the_parquet_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "authorization=Bearer%20t0ken,x-tenant=ops")
    with OtlpReceiver() as receiver:
        spans_out = OtlpExporter(OtlpConfig(endpoint=receiver.endpoint, service_name="opsagent-test"))
        with FanoutExporter([ParquetExporter(tmp_path), spans_out]) as both:
            both.export(_events())
            both.flush()
        spans = receiver.received()
    assert receiver.headers[0]["authorization"] == "Bearer t0ken" and receiver.headers[0]["x-tenant"] == "ops"
    names = sorted(s.name for s in spans)
    assert names == sorted(["case", "step", "step", "step", "plan", "plan", "plan", "policy.decide",
                            "policy.decide", "policy.decide", "tool.call", "tool.call", "tool.call",
                            "approval", "approval"])
    assert {s.trace_id for s in spans} == {trace_id_of("case-otlp1")}
    assert all(s.resource["service.name"] == "opsagent-test" for s in spans)
    (case,) = [s for s in spans if s.name == "case"]
    steps = {s.attributes["opsagent.step"]: s for s in spans if s.name == "step"}
    assert case.parent_id is None and case.attributes["opsagent.status"] == "resolved"
    assert all(s.parent_id == case.span_id for s in steps.values())
    for span in spans:
        if span.name not in ("case", "step"):
            assert span.parent_id == steps[span.attributes["opsagent.step"]].span_id, span.name
    # a step spans its children: step 2 from the held action to the approved call
    assert steps[2].start_ns == min(s.start_ns for s in spans if s.attributes.get("opsagent.step") == 2
                                    and s.name != "step")
    assert steps[2].end_ns >= max(s.end_ns for s in spans if s.attributes.get("opsagent.step") == 2)
    failed_call = [s for s in spans if s.name == "tool.call" and s.attributes.get("opsagent.error")]
    assert len(failed_call) == 1 and failed_call[0].status_code == 2  # STATUS_CODE_ERROR

    # the same ids as the Parquet trace
    stored = {row[0]: row[1] for table in ("planner_calls", "actions", "approval_events")
              for row in query(tmp_path, f"SELECT event_id, '{table}' FROM {table}")[1]}
    final = query(tmp_path, "SELECT event_id FROM case_events WHERE status = 'resolved'")[1][0][0]
    spanned = {s.attributes["opsagent.event_id"] for s in spans if s.name != "step"}
    assert spanned == set(stored) | {final}
    for span in spans:
        event_id = span.attributes.get("opsagent.event_id")
        if span.name in ("plan", "policy.decide", "approval"):
            assert span.span_id == event_id[:16]
        elif span.name == "tool.call":
            assert span.span_id == event_id[16:32]


def test_a_collector_that_is_down_costs_the_trace_nothing(tmp_path):
    spans_out = OtlpExporter(OtlpConfig(endpoint="http://127.0.0.1:9/v1/traces", timeout_s=0.5))
    parquet = ParquetExporter(tmp_path)
    spans_out.export(_events())  # queued; the SDK's thread fails to send them, nothing raises here
    spans_out.flush()
    spans_out.close()
    parquet.export(_events())
    parquet.flush()
    assert query(tmp_path, "SELECT count(*) FROM planner_calls")[1] == [(3,)]
    with pytest.raises(Exception, match="after close"):
        spans_out.export(_events())
