"""The breakdown arithmetic on hand-made trace rows (times in ms from a fixed origin)."""

from datetime import UTC, datetime, timedelta

import pytest

from opsagent.evals.bench.breakdown import (
    ActionRow, CallRow, CaseRow, CaseTrace, StatusRow, breakdown, case_end, mean_parts,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def two_step_case(**case) -> CaseTrace:
    """Receipt at 0; step 1 reads (plan 10-1010, first token 310), step 2 writes (plan 1100-2100,
    first token 1400), then a finish call after the write that must not count."""
    return CaseTrace(
        case=CaseRow(case_id="c1", exception_type="missed_pickup", status="resolved", received_at=at(0),
                     finished_at=at(3000), **case),
        statuses=[StatusRow(case_id="c1", status=s, recorded_at=at(t)) for s, t in (
            ("received", 1), ("planning", 5), ("executing", 1030), ("planning", 1090),
            ("executing", 2130), ("planning", 2210), ("resolved", 3000))],
        calls=[CallRow(case_id="c1", step=1, started_at=at(10), first_token_at=at(310), finished_at=at(1010),
                       prompt_tokens=1000, cached_prompt_tokens=900, completion_tokens=30, queued_ms=2.0),
               CallRow(case_id="c1", step=2, started_at=at(1100), first_token_at=at(1400), finished_at=at(2100),
                       prompt_tokens=1100, cached_prompt_tokens=1000, completion_tokens=40, queued_ms=3.0),
               CallRow(case_id="c1", step=3, started_at=at(2250), first_token_at=at(2300), finished_at=at(2900),
                       prompt_tokens=1200, completion_tokens=20)],
        actions=[ActionRow(case_id="c1", step=1, tool="tms_get_pickup", decision="allow", executed=True,
                           writes=False, started_at=at(1020), finished_at=at(1080)),
                 ActionRow(case_id="c1", step=2, tool="tms_reschedule_pickup", decision="allow", executed=True,
                           writes=True, started_at=at(2110), finished_at=at(2200))],
    )


def test_parts_add_up_to_the_latency_and_stop_at_the_last_write():
    b = breakdown(two_step_case(), export_ms=1.0)
    assert b is not None
    assert b.latency_ms == pytest.approx(2200)  # receipt to the write's end, not to the finish
    assert b.planner_calls == 2 and b.prompt_tokens == 2100 and b.completion_tokens == 70
    assert b.cached_prompt_tokens == 1900 and b.engine_queue_ms == pytest.approx(5.0)
    assert b.prefill_ms == pytest.approx(300 + 300) and b.decode_ms == pytest.approx(700 + 700)
    assert b.policy_ms == pytest.approx((1030 - 1020) + (2130 - 2110))
    assert b.tool_ms == pytest.approx((1080 - 1030 - 1) + (2200 - 2130 - 1))
    # exports inside the window: 5 status events, 2 planner calls, the read's action event
    assert b.trace_exports == 8 and b.trace_ms == pytest.approx(8.0)
    parts = b.prefill_ms + b.decode_ms + b.unsplit_ms + b.policy_ms + b.tool_ms + b.trace_ms + b.other_ms
    assert parts == pytest.approx(b.latency_ms)
    assert b.other_ms == pytest.approx(2200 - 600 - 1400 - 30 - 118 - 8)


def test_no_write_ends_at_the_final_status_and_unsplit_calls_count_whole():
    trace = two_step_case()
    trace.actions[1] = trace.actions[1].model_copy(update={"error": "HTTP 409: no"})
    trace.calls[2] = trace.calls[2].model_copy(update={"first_token_at": None})
    b = breakdown(trace, export_ms=0.0)
    assert case_end(trace) == at(3000) and b.latency_ms == pytest.approx(3000)
    assert b.planner_calls == 3 and b.unsplit_ms == pytest.approx(650)


def test_denied_action_is_all_policy_and_unfinished_case_has_no_breakdown():
    trace = two_step_case()
    trace.actions[0] = trace.actions[0].model_copy(update={"decision": "deny", "executed": False,
                                                           "finished_at": at(1025)})
    b = breakdown(trace, export_ms=0.0)
    assert b.policy_ms == pytest.approx(5 + 20)
    open_case = CaseTrace(case=CaseRow(case_id="c2", exception_type="x", status="planning", received_at=at(0)))
    assert breakdown(open_case, export_ms=1.0) is None


def test_mean_parts():
    b = breakdown(two_step_case(), export_ms=1.0)
    means = mean_parts([b, b])
    assert means["latency_ms"] == pytest.approx(2200) and means["decode_ms"] == pytest.approx(1400)
    assert mean_parts([]) == {}
