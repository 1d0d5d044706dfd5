"""Planner what-if: a traced case re-planned against its recorded observations, nothing executed."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from opsagent.agents.engines.scripted import ScriptedEngine
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.replay import load_case_trace
from opsagent.errors import UnexpectedEngineCall
from opsagent.evals.gold import gold_step
from opsagent.evals.planner_whatif import render_what_if, same_decision, what_if
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine
from tests.fakes.traced import TracedCases, trace_two_cases


@pytest.fixture(scope="module")
def traced(platform, registry, tmp_path_factory) -> TracedCases:
    return trace_two_cases(platform, registry, tmp_path_factory.mktemp("traces"))


def _run(traced, registry, case, script):
    engine = ScriptedEngine(script, model="candidate")
    planner = Planner(engine, builtin_playbooks(), registry)
    trace = load_case_trace(traced.root, case.case_id)
    allowed = PolicyEngine(load_default_policy(), registry).allowed_tools("weight_mismatch")
    return asyncio.run(what_if(trace, planner, allowed)), engine


def _carrier(platform, sid):
    return httpx.get(f"{platform.base_urls['tms']}/shipments/{sid}").json()


def test_the_gold_planner_reproduces_a_resolved_case(traced, registry):
    result, engine = _run(traced, registry, traced.resolved, [gold_step] * 3)
    engine.assert_done()  # three model calls; the playbook's finish needs none
    assert [s.same for s in result.steps] == [True, True, True, True]
    assert [s.model_called for s in result.steps] == [True, True, True, False]
    assert result.first_difference is None and result.agreement == 1.0
    assert "4/4 decisions the same" in render_what_if(result)


def test_each_step_is_shown_the_recorded_observations(traced, registry):
    seen = []

    def spy(request):
        seen.append(request.messages[-1].content)
        return gold_step(request)

    _run(traced, registry, traced.resolved, [spy] * 3)
    recorded = traced.resolved.steps[0].result
    assert str(recorded["scanned_weight_kg"]) in seen[1]  # step 2 sees step 1's recorded result


def test_a_different_planner_shows_where_it_differs_and_writes_nothing(traced, registry, platform):
    sid = traced.approved.report.entities["shipment_id"]
    before = _carrier(platform, sid)

    def escalate(request):  # the gold's evidence, but it gives up instead of acting
        return {"evidence": gold_step(request)["evidence"], "tool": "finish", "status": "escalated",
                "reason": "not sure"}

    result, _ = _run(traced, registry, traced.approved, [gold_step, gold_step, escalate, escalate])
    assert [s.same for s in result.steps] == [True, True, False, True]
    assert result.first_difference == 3
    assert result.steps[2].proposed == {"tool": "finish", "status": "escalated"}
    assert result.steps[2].recorded["tool"] == "tms_adjust_billed_weight"
    text = render_what_if(result)
    assert "≠ step 3" in text and "first difference at step 3" in text
    assert _carrier(platform, sid) == before  # nothing was executed


def test_an_unusable_output_is_a_difference_with_its_error(traced, registry):
    result, _ = _run(traced, registry, traced.resolved, ["not json", gold_step, gold_step])
    assert not result.steps[0].same and result.steps[0].proposed is None
    assert "not a step" in result.steps[0].error


def test_a_planner_that_asks_for_more_than_the_trace_fails_loudly(traced, registry):
    with pytest.raises(UnexpectedEngineCall):
        _run(traced, registry, traced.resolved, [gold_step])


def test_same_decision_compares_key_arguments_only_when_told():
    recorded = {"tool": "t", "args": {"id": "A", "reason": "x"}}
    assert same_decision(recorded, {"tool": "t", "args": {"id": "A", "reason": "x"}})
    assert not same_decision(recorded, {"tool": "t", "args": {"id": "A", "reason": "y"}})
    assert same_decision(recorded, {"tool": "t", "args": {"id": "A", "reason": "y"}}, ["id"])
    assert not same_decision(recorded, {"tool": "t", "args": {"id": "B"}}, ["id"])
    assert not same_decision(recorded, {"tool": "u", "args": recorded["args"]})
    assert not same_decision(recorded, None)
    assert same_decision({"tool": "finish", "status": "resolved"}, {"tool": "finish", "status": "resolved"})
    assert not same_decision({"tool": "finish", "status": "resolved"}, {"tool": "finish", "status": "escalated"})
