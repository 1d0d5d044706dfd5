"""`opsagent replay`: a traced case's steps rebuilt from the Parquet store alone."""

from __future__ import annotations

import json

import pytest

from opsagent.agents.tracing.replay import case_at, decisions, load_case_trace, render_replay, steps_of
from opsagent.cli import main
from opsagent.errors import CaseNotFound
from tests.fakes.traced import TracedCases, trace_two_cases


@pytest.fixture(scope="module")
def traced(platform, registry, tmp_path_factory) -> TracedCases:
    return trace_two_cases(platform, registry, tmp_path_factory.mktemp("traces"))


def _view(step):
    return (step.step, step.tool, step.args, step.executed, step.ok, step.verdict, step.error)


def test_steps_rebuilt_from_traces_are_the_runners_steps(traced):
    for case in (traced.resolved, traced.approved):
        trace = load_case_trace(traced.root, case.case_id)
        assert trace.status == case.status and trace.entities == case.report.entities
        rebuilt = steps_of(trace)
        assert [_view(s) for s in rebuilt] == [_view(s) for s in case.steps]
        assert [s.result for s in rebuilt] == [s.result for s in case.steps]
        assert [s.evidence for s in rebuilt] == [s.evidence for s in case.steps]
        assert rebuilt[-1].approval_id == case.steps[-1].approval_id


def test_decisions_end_with_the_finish_and_case_at_holds_only_the_past(traced):
    trace = load_case_trace(traced.root, traced.approved.case_id)
    made = decisions(trace)
    assert [d["tool"] for d in made] == [
        "wms_get_shipment", "tms_get_shipment", "tms_adjust_billed_weight", "finish"]
    assert made[-1]["status"] == "escalated"
    assert [s.tool for s in case_at(trace, 3).steps] == ["wms_get_shipment", "tms_get_shipment"]
    resolved = decisions(load_case_trace(traced.root, traced.resolved.case_id))
    assert resolved[-1] == {"step": 4, "tool": "finish", "status": "resolved"}  # the playbook's finish


def test_render_shows_prompt_output_policy_result_and_approval(traced):
    text = render_replay(load_case_trace(traced.root, traced.approved.case_id))
    assert text.count("\nstep ") == 4
    assert "prompt   " in text and "messages" in text and "(not recorded" not in text
    assert "output   {" in text
    assert "policy   require_approval (high risk)" in text
    assert "policy   allow (high risk)" in text and "-> executed" in text
    assert "approved by alice: scale agrees" in text
    assert text.rstrip().splitlines()[-1].startswith("end      escalated")
    full = render_replay(load_case_trace(traced.root, traced.approved.case_id), full_prompt=True)
    assert "[system]" in full and len(full) > len(text)


def test_prompt_is_the_one_the_model_was_given(traced):
    trace = load_case_trace(traced.root, traced.resolved.case_id)
    first = trace.planner_calls[0]["prompt"]
    assert [m["role"] for m in first][0] == "system"
    assert traced.resolved.report.description in first[-1]["content"]
    later = trace.planner_calls[1]["prompt"]  # the second step's prompt holds the first result
    assert json.dumps(trace.actions[0]["result"]["shipment_id"]) .strip('"') in later[-1]["content"]


def test_unknown_case_is_a_clear_error(traced, capsys):
    with pytest.raises(CaseNotFound, match="no case 'case-nope'"):
        load_case_trace(traced.root, "case-nope")
    assert main(["replay", "case-nope", "--traces", str(traced.root)]) == 1  # a runtime failure (usage errors are 2)
    assert "no case 'case-nope'" in capsys.readouterr().err


def test_cli_prints_the_replay(traced, capsys):
    assert main(["replay", traced.resolved.case_id, "--traces", str(traced.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"case {traced.resolved.case_id} (weight_mismatch): resolved")
    assert "tms_open_weight_dispute" in out
