"""Trace rows read back through DuckDB, the engine recording, and the floor's arithmetic."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from opsagent.agents.engines import ChatMessage, GenerationRequest, ScriptedEngine
from opsagent.agents.tracing.records import ActionEvent, CaseEvent, PlannerCallEvent
from opsagent.agents.tracing.writer import TraceWriter
from opsagent.evals.bench.breakdown import breakdown
from opsagent.evals.bench.floor import CallFloor, case_floor, floor_requests, warm_prefixes
from opsagent.evals.bench.recording import EngineTiming, RecordingEngine, read_timings
from opsagent.evals.bench.trace_rows import load_traces, recorded_calls, recorded_tools

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CASE = "case-0123456789ab"
PROMPT = [{"role": "system", "content": "rules"}, {"role": "user", "content": "example"},
          {"role": "assistant", "content": "{}"}, {"role": "user", "content": "the case"}]


def at(ms):
    return T0 + timedelta(milliseconds=ms)


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "traces"
    writer = TraceWriter(root)
    common = dict(case_id=CASE, exception_type="missed_pickup", description="d", entities={"pickup_id": "PU-1"},
                  received_at=at(0))
    writer.export([CaseEvent(status="received", recorded_at=at(1), **common),
                   CaseEvent(status="planning", recorded_at=at(2), **common),
                   PlannerCallEvent(case_id=CASE, step=1, model="m", prompt_digest="p", prompt_tokens=100,
                                    completion_tokens=12, output='{"tool":"tms_get_pickup"}', finish_reason="stop",
                                    started_at=at(10), finished_at=at(510), duration_ms=500, prompt=PROMPT),
                   CaseEvent(status="executing", recorded_at=at(530), **common),
                   ActionEvent(case_id=CASE, step=1, tool="tms_reschedule_pickup", args={"pickup_id": "PU-1"},
                               risk="low", decision="allow", reasons=[], writes=True, executed=True, dry_run=False,
                               started_at=at(520), finished_at=at(600), policy_version="v", args_digest="d"),
                   CaseEvent(status="resolved", recorded_at=at(700), finished_at=at(700), **common)])
    writer.close()
    return root


def test_load_traces_joins_engine_timings_on_case_and_start(store):
    timing = EngineTiming(request_id=f"{CASE}-0-abc123", started_at=at(10), first_token_at=at(300),
                          finished_at=at(510), prompt_tokens=100, cached_prompt_tokens=64, completion_tokens=12,
                          queued_ms=1.5, json_schema={"type": "object"}, max_tokens=160)
    other = timing.model_copy(update={"request_id": "case-ffffffffffff-0-abc123"})
    traces = load_traces(store, [CASE, "case-missing"], [timing, other])
    assert list(traces) == [CASE]
    trace = traces[CASE]
    assert [s.status for s in sorted(trace.statuses, key=lambda s: s.recorded_at)] == [
        "received", "planning", "executing", "resolved"]
    assert trace.calls[0].first_token_at == at(300) and trace.calls[0].cached_prompt_tokens == 64
    b = breakdown(trace, export_ms=2.0)
    assert b.latency_ms == pytest.approx(600) and b.prefill_ms == pytest.approx(290)
    assert b.policy_ms == pytest.approx(10) and b.tool_ms == pytest.approx(68)

    calls = recorded_calls(store, [CASE])
    assert calls[CASE][0].prompt == PROMPT and calls[CASE][0].completion_tokens == 12
    tools = recorded_tools(store, [CASE])
    assert [(t.tool, t.args) for t in tools[CASE]] == [("tms_reschedule_pickup", {"pickup_id": "PU-1"})]
    requests = floor_requests(calls, [timing], {CASE: "missed_pickup"})
    (req,) = requests[CASE]
    assert req.max_tokens == 12 and req.json_schema == {"type": "object"} and req.output == '{"tool":"tms_get_pickup"}'
    assert floor_requests(calls, [], {CASE: "missed_pickup"}) == {CASE: []}  # no schema recorded: left out
    (prefix,) = warm_prefixes(requests).values()
    assert [m.content for m in prefix] == ["rules", "example", "{}", "warm-up"]


def test_case_floor_counts_only_the_window(store):
    timing = EngineTiming(request_id=f"{CASE}-0-abc123", started_at=at(10), first_token_at=None,
                          finished_at=at(510), prompt_tokens=100, cached_prompt_tokens=None, completion_tokens=12,
                          queued_ms=None, json_schema={"type": "object"}, max_tokens=160)
    (req,) = floor_requests(recorded_calls(store, [CASE]), [timing], {CASE: "missed_pickup"})[CASE]
    planner = {req.key: CallFloor(ms=400.0, prefill_ms=100.0, completion_tokens=12, cached_prompt_tokens=None,
                                  same_output=True)}
    floor = case_floor(CASE, 1, 600.0, at(600), [req], planner, [(at(600), 20.0), (at(900), 50.0)])
    assert (floor.planner_ms, floor.tool_ms, floor.floor_ms, floor.calls) == (400.0, 20.0, 420.0, 1)
    assert floor.over_floor == pytest.approx(600 / 420)
    early = case_floor(CASE, 1, 100.0, at(100), [req], planner, [])
    assert early.floor_ms == 0 and early.over_floor is None


def test_recording_engine_appends_one_line_per_call(tmp_path):
    path = tmp_path / "engine.jsonl"
    engine = RecordingEngine(ScriptedEngine([{"tool": "finish"}, {"tool": "x"}]), path)
    schema = {"type": "object"}
    for n in range(2):
        asyncio.run(engine.generate(GenerationRequest(
            request_id=f"{CASE}-{n}-aaaaaa", messages=[ChatMessage(role="user", content="hi")], json_schema=schema)))
    rows = read_timings(path)
    assert [r.request_id for r in rows] == [f"{CASE}-0-aaaaaa", f"{CASE}-1-aaaaaa"]
    assert rows[0].json_schema == schema and rows[0].max_tokens == 160 and rows[0].first_token_at is None
    assert read_timings(tmp_path / "nothing.jsonl") == []
