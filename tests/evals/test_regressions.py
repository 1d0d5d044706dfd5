"""`opsagent evals add-case`: a traced case frozen as a regression case, replayed by a planner."""

from __future__ import annotations

import asyncio

import pytest

from opsagent.agents.engines.scripted import ScriptedEngine
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.replay import load_case_trace
from opsagent.cli import main
from opsagent.errors import InputError
from opsagent.evals.gold import gold_step
from opsagent.evals.regressions import add_case, case_from_trace, load_regressions, run_regressions
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine
from tests.fakes.traced import TracedCases, trace_two_cases


@pytest.fixture(scope="module")
def traced(platform, registry, tmp_path_factory) -> TracedCases:
    return trace_two_cases(platform, registry, tmp_path_factory.mktemp("traces"))


def _replay(cases, registry, script):
    planner = Planner(ScriptedEngine(script), builtin_playbooks(), registry)
    allowed = {"weight_mismatch": PolicyEngine(load_default_policy(), registry).allowed_tools("weight_mismatch")}
    return asyncio.run(run_regressions(cases, planner, allowed))


def test_a_case_that_went_right_is_kept_right(traced, registry, tmp_path):
    path = add_case(traced.root, traced.resolved.case_id, tmp_path, note="keep disputes right")
    (case,) = load_regressions(tmp_path)
    assert path.name == f"{traced.resolved.case_id}.json" and case.note == "keep disputes right"
    assert [e.tool for e in case.expected] == [
        "wms_get_shipment", "tms_get_shipment", "tms_open_weight_dispute", "finish"]
    (result,) = _replay([case], registry, [gold_step] * 3)
    assert result.first_difference is None
    wrong = {"evidence": {"scale_check": "passed", "scanned_weight_kg": 1.0, "billed_weight_kg": 2.0},
             "tool": "finish", "status": "escalated", "reason": "x"}
    (result,) = _replay([case], registry, [wrong] * 3)
    assert result.first_difference == 1


def test_a_corrected_case_fails_until_the_planner_changes(traced, registry):
    trace = load_case_trace(traced.root, traced.approved.case_id)
    case = case_from_trace(trace, outcome="escalated", at=3, note="should not rebill")
    assert [e.tool for e in case.expected] == ["wms_get_shipment", "tms_get_shipment", "finish"]
    assert case.expected[-1].status == "escalated"
    (result,) = _replay([case], registry, [gold_step] * 3)  # the gold planner disputes at step 3
    assert result.first_difference == 3


def test_outcome_alone_changes_the_final_status(traced):
    trace = load_case_trace(traced.root, traced.resolved.case_id)
    case = case_from_trace(trace, outcome="escalated")
    assert case.expected[-1].tool == "finish" and case.expected[-1].status == "escalated"
    assert len(case.expected) == 4


def test_bad_requests_are_refused_clearly(traced, tmp_path):
    trace = load_case_trace(traced.root, traced.resolved.case_id)
    with pytest.raises(InputError, match="--at needs --outcome"):
        case_from_trace(trace, at=2)
    with pytest.raises(InputError, match="outside them"):
        case_from_trace(trace, outcome="escalated", at=9)
    add_case(traced.root, traced.resolved.case_id, tmp_path)
    with pytest.raises(InputError, match="--force"):
        add_case(traced.root, traced.resolved.case_id, tmp_path)
    add_case(traced.root, traced.resolved.case_id, tmp_path, force=True)
    (tmp_path / "broken.json").write_text("{}")
    with pytest.raises(InputError, match="broken.json is not a regression case"):
        load_regressions(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        load_regressions(tmp_path / "missing")


def test_cli_add_case(traced, tmp_path, capsys):
    out = tmp_path / "reg"
    assert main(["eval", "add-case", traced.approved.case_id, "--traces", str(traced.root),
                 "--out", str(out), "--outcome", "escalated", "--at", "3"]) == 0
    assert f"wrote {out / traced.approved.case_id}.json" in capsys.readouterr().out
    assert main(["eval", "add-case", "case-nope", "--traces", str(traced.root), "--out", str(out)]) == 1  # a runtime failure
    assert "no case 'case-nope'" in capsys.readouterr().err


def test_cli_regressions_and_replay_what_if_build_the_engine_their_config_names(
        traced, tmp_path, capsys, monkeypatch):
    """The CLI wiring: each command hands `--config` to the engine factory and re-plans with the
    engine it returns. The factory is pointed at scripted engines (the real engine's run is the
    cluster's end-to-end test); it records the configs it was given."""
    import opsagent.cluster.system as system

    config = tmp_path / "system.yaml"
    config.write_text("planner:\n  engine: openai\n  max_tokens: 99\n"
                      "  openai: {base_url: 'http://127.0.0.1:9/v1', model: configured-model}\n")
    scripts = [[gold_step] * 3, [gold_step] * 6]  # one engine per command: 1 case, then 2
    asked = []

    def make_engine(cfg):
        asked.append(cfg)
        return ScriptedEngine(scripts.pop(0))

    monkeypatch.setattr(system, "make_engine", make_engine)
    out = tmp_path / "reg"
    add_case(traced.root, traced.resolved.case_id, out)
    assert main(["eval", "regressions", str(out), "--config", str(config)]) == 0
    assert "1/1 regression cases reproduce their decisions" in capsys.readouterr().out
    add_case(traced.root, traced.approved.case_id, out, outcome="escalated", at=3)
    assert main(["eval", "regressions", str(out), "--config", str(config)]) == 1
    assert f"differing: {traced.approved.case_id}" in capsys.readouterr().out
    scripts.append([gold_step] * 3)
    assert main(["replay", traced.resolved.case_id, "--traces", str(traced.root), "--what-if",
                 "--config", str(config)]) == 0
    assert "4/4 decisions the same" in capsys.readouterr().out
    assert scripts == [] and len(asked) == 3
    assert all(c.planner.engine == "openai" and c.planner.openai.model == "configured-model"
               and c.planner.max_tokens == 99 for c in asked)


def test_a_corrected_action_is_expected_at_its_step_and_the_replay_ends_there(traced, registry):
    from opsagent.evals.regressions import ExpectedDecision

    trace = load_case_trace(traced.root, traced.approved.case_id)
    sid = traced.approved.report.entities["shipment_id"]
    scan = traced.approved.steps[0].result["scanned_weight_kg"]
    dispute = ExpectedDecision(step=3, tool="tms_open_weight_dispute", key_args=["shipment_id", "claimed_weight_kg"],
                               args={"shipment_id": sid, "claimed_weight_kg": scan})
    case = case_from_trace(trace, action=dispute, note="dispute, do not rebill")
    assert [e.tool for e in case.expected] == ["wms_get_shipment", "tms_get_shipment", "tms_open_weight_dispute"]
    (result,) = _replay([case], registry, [gold_step] * 3)  # the gold disputes the scanned weight
    assert result.first_difference is None
    wrong = ExpectedDecision(step=3, tool="tms_open_weight_dispute", key_args=["claimed_weight_kg"],
                             args={"claimed_weight_kg": scan + 1})
    (result,) = _replay([case_from_trace(trace, action=wrong)], registry, [gold_step] * 3)
    assert result.first_difference == 3
    with pytest.raises(InputError, match="not both"):
        case_from_trace(trace, action=dispute, outcome="escalated")
    with pytest.raises(InputError, match="outside them"):
        case_from_trace(trace, action=dispute.model_copy(update={"step": 7}))


def test_cli_corrected_action_arguments(traced, tmp_path, capsys):
    base = ["eval", "add-case", traced.approved.case_id, "--traces", str(traced.root), "--out", str(tmp_path)]
    assert main([*base, "--step", "3", "--tool", "tms_open_weight_dispute",
                 "--args", '{"shipment_id": "X"}', "--key-args", "shipment_id"]) == 0
    (case,) = load_regressions(tmp_path)
    assert case.expected[-1].key_args == ["shipment_id"] and case.expected[-1].args == {"shipment_id": "X"}
    assert main([*base, "--force", "--step", "3", "--tool", "t", "--args", "[1]"]) == 2
    assert "--args must be a JSON object" in capsys.readouterr().err
    assert main([*base, "--force", "--tool", "t"]) == 2
    assert "needs --step and --tool" in capsys.readouterr().err
