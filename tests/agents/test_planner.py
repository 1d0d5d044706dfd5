"""Prompt, schema and parsing around one engine call; the engine is scripted.

Tests that look at the JSON schema or parse raw text run the planner with `decoding="schema"`
(the whole step generated); the candidate choice is tested in test_planner_choice.py."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from opsagent.agents.case import Case, ExceptionReport, Step
from opsagent.agents.engines import GenerationResult, ScriptedEngine
from opsagent.agents.planner import Planner, parse_step
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.prompts import observation_message
from opsagent.errors import ConfigError, PlannerOutputError
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine

NOW = datetime.now(UTC)


def _case(shipment_id="SHP-100001", exception_type="weight_mismatch"):
    return Case(report=ExceptionReport(exception_type=exception_type, description="billed 9 kg, we scanned 4",
                                       entities={"shipment_id": shipment_id}))


@pytest.fixture
def allowed(registry):
    return PolicyEngine(load_default_policy(), registry).allowed_tools("weight_mismatch")


def test_plan_sends_examples_then_the_case_and_parses_the_step(registry, allowed):
    step = {"evidence": {"scale_check": "unknown"}, "tool": "wms_get_shipment",
            "args": {"shipment_id": "SHP-100001"}}
    engine = ScriptedEngine([step])
    turn = asyncio.run(Planner(engine, builtin_playbooks(), registry, decoding="schema").plan(_case(), allowed))
    engine.assert_done()
    assert turn.step.tool == "wms_get_shipment" and turn.error is None and turn.prompt_digest
    (request,) = engine.requests
    assert request.messages[0].role == "system" and "weight_mismatch" in request.messages[0].content
    assert "billed 9 kg" in request.messages[-1].content
    examples = builtin_playbooks()["weight_mismatch"].examples
    assert len(examples) >= 6 and {e.turns[-1].output["tool"] for e in examples} == {
        "finish", "tms_open_weight_dispute"}
    offered = {v["properties"]["tool"]["const"] for v in request.json_schema["anyOf"]}
    assert offered == {"wms_get_shipment", "finish"}  # prerequisites gate the rest


def test_every_case_of_a_class_shares_the_prompt_prefix(registry, allowed):
    """Everything before the case is identical, so vLLM's prefix cache computes it once."""
    engine = ScriptedEngine([{"tool": "finish"}] * 2)
    planner = Planner(engine, builtin_playbooks(), registry)
    for sid in ("SHP-100001", "SHP-200002"):
        asyncio.run(planner.plan(_case(sid), allowed))
    a, b = (r.messages for r in engine.requests)
    assert a[:-1] == b[:-1] and a[-1] != b[-1]


def test_resolving_write_finishes_without_a_model_call(registry, allowed):
    case = _case()
    case.steps.append(Step(step=1, tool="tms_open_weight_dispute", executed=True, ok=True,
                           result={"dispute_id": "WD-9"}, evidence={"scale_check": "passed"}))
    engine = ScriptedEngine([])
    turn = asyncio.run(Planner(engine, builtin_playbooks(), registry).plan(case, allowed))
    assert turn.generation is None and turn.step.tool == "finish" and turn.step.status == "resolved"
    assert "WD-9" in turn.step.reason and engine.requests == []


def test_a_failed_resolving_write_goes_back_to_the_model(registry, allowed):
    case = _case()
    case.steps.append(Step(step=1, tool="tms_open_weight_dispute", executed=True, ok=False,
                           error="409 already open"))
    engine = ScriptedEngine([{"evidence": {"scale_check": "unknown"}, "tool": "finish",
                              "status": "escalated", "reason": "409"}])
    turn = asyncio.run(Planner(engine, builtin_playbooks(), registry).plan(case, allowed))
    engine.assert_done()
    assert turn.step.status == "escalated"


def test_bad_outputs_become_errors_not_exceptions(registry, allowed):
    engine = ScriptedEngine(["not json at all"])
    turn = asyncio.run(Planner(engine, builtin_playbooks(), registry, decoding="schema").plan(_case(), allowed))
    assert turn.step is None and "not a step" in turn.error and turn.generation.text == "not json at all"


def test_truncated_output_is_rejected():
    cut = GenerationResult(text='{"tool": "wms_get', model="m", prompt_tokens=5, completion_tokens=160,
                           finish_reason="length", started_at=NOW, finished_at=NOW)
    with pytest.raises(PlannerOutputError, match="cut off"):
        parse_step(cut)


def test_unknown_class_has_no_playbook(registry):
    planner = Planner(ScriptedEngine([]), builtin_playbooks(), registry)
    with pytest.raises(ConfigError, match="no playbook"):
        asyncio.run(planner.plan(_case(exception_type="customs_docs_missing"), ["wms_get_shipment"]))


def test_warm_up_prefills_each_class_once_with_one_token(registry, allowed):
    engine = ScriptedEngine([{"tool": "finish"}])
    warmed = asyncio.run(Planner(engine, builtin_playbooks(), registry).warm_up(
        {"weight_mismatch": allowed, "no_such_class": ["x"]}))
    engine.assert_done()
    assert warmed == 1 and engine.requests[0].max_tokens == 1


def test_observation_shows_only_the_playbook_fields():
    step = Step(step=1, tool="wms_get_shipment", executed=True, ok=True,
                result={"shipment_id": "S", "scale_check": "passed", "order_id": "SO-1"})
    assert observation_message(step, {"wms_get_shipment": ["scale_check"]}) == (
        'Result of wms_get_shipment: {"scale_check":"passed"}')
    assert "order_id" in observation_message(step)
    denied = Step(step=2, tool="x", verdict="deny", reasons=["not allowed"])
    assert observation_message(denied) == "Policy denied x: not allowed"


def test_a_hand_off_to_humans_escalates_without_a_model_call(registry):
    """escalate_on: once the ticket is assigned to a team, the case is escalated."""
    case = _case()
    case.report = case.report.model_copy(update={"exception_type": "tracking_stuck"})
    case.steps.append(Step(step=1, tool="tkt_assign_ticket", executed=True, ok=True,
                           result={"ticket_id": "TKT-1", "team": "carrier_relations"}))
    books = builtin_playbooks()
    books["tracking_stuck"] = books["tracking_stuck"].model_copy(
        update={"escalate_on": ["tkt_assign_ticket"]})
    engine = ScriptedEngine([])
    turn = asyncio.run(Planner(engine, books, registry).plan(case, ["tkt_assign_ticket"]))
    assert turn.generation is None and turn.step.status == "escalated" and "TKT-1" in turn.step.reason


def _refused_twice():
    case = _case()
    case.steps += [Step(step=1, tool="wms_get_shipment", executed=True, ok=False, error="500"),
                   Step(step=2, tool="wms_get_shipment", verdict="deny", reasons=["scope"])]
    return case


def test_a_tool_refused_twice_is_no_longer_offered(registry, allowed):
    engine = ScriptedEngine([{"evidence": {"scale_check": "unknown"}, "tool": "finish",
                              "status": "escalated", "reason": "cannot read"}])
    asyncio.run(Planner(engine, builtin_playbooks(), registry, decoding="schema").plan(_refused_twice(), allowed))
    engine.assert_done()
    offered = {v["properties"]["tool"]["const"] for v in engine.requests[0].json_schema["anyOf"]}
    assert offered == {"finish"}


def test_with_nothing_left_to_choose_the_step_is_taken_without_the_model(registry, allowed):
    """Choice decoding: the refused read leaves one candidate (escalate), taken by rule."""
    engine = ScriptedEngine([])
    turn = asyncio.run(Planner(engine, builtin_playbooks(), registry).plan(_refused_twice(), allowed))
    assert engine.requests == [] and turn.generation is None and turn.decided_by == "rule"
    assert turn.step.tool == "finish" and turn.step.status == "escalated"
    assert turn.step.reason.startswith("Policy denied wms_get_shipment: scope")
    assert [c.decision for c in turn.candidates] == ["finish:escalated"] and turn.confidence == 1.0
