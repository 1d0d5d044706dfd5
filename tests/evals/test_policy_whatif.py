"""Policy what-if over history: past actions through a new policy file, nothing executed."""

from __future__ import annotations

import pytest
import yaml

from opsagent.cli import main
from opsagent.evals.policy_whatif import policy_what_if, render_policy_what_if
from opsagent.policy.config import PolicyConfig, load_default_policy
from tests.fakes.traced import TracedCases, trace_two_cases


@pytest.fixture(scope="module")
def registry(platform):
    """The sandbox platform's tools (this folder's conftest hand-builds a smaller registry)."""
    return platform.registry()


@pytest.fixture(scope="module")
def traced(platform, registry, tmp_path_factory) -> TracedCases:
    return trace_two_cases(platform, registry, tmp_path_factory.mktemp("traces"))


def _policy(edit) -> PolicyConfig:
    data = load_default_policy().model_dump(mode="json", exclude_none=True)
    edit(data["classes"]["weight_mismatch"]["tools"])
    return PolicyConfig.model_validate(data)


def _mine(replayed, traced):
    ours = {traced.resolved.case_id, traced.approved.case_id}
    return [r for r in replayed if r.case_id in ours]


def test_the_same_policy_decides_every_past_action_the_same(traced, registry):
    replayed = _mine(policy_what_if(traced.root, traced.policy, registry), traced)
    # 3 steps of the resolved case, 3 of the approved one (its held and executed rows are one proposal)
    assert len(replayed) == 6
    assert not [r for r in replayed if r.changed]
    held = [r for r in replayed if r.tool == "tms_adjust_billed_weight"]
    assert [(r.was, r.now, r.executed, r.approved) for r in held] == [
        ("require_approval", "require_approval", True, True)]


def test_a_stricter_policy_shows_what_it_would_hold_and_deny(traced, registry):
    def edit(tools):
        tools["tms_open_weight_dispute"]["risk"] = "high"
        del tools["tms_get_shipment"]

    replayed = _mine(policy_what_if(traced.root, _policy(edit), registry), traced)
    changed = {(r.case_id, r.tool): (r.was, r.now) for r in replayed if r.changed}
    assert changed[(traced.resolved.case_id, "tms_open_weight_dispute")] == ("allow", "require_approval")
    assert changed[(traced.resolved.case_id, "tms_get_shipment")] == ("allow", "deny")
    assert changed[(traced.approved.case_id, "tms_get_shipment")] == ("allow", "deny")
    assert len(changed) == 3
    text = render_policy_what_if(replayed)
    assert "allow -> deny: 2" in text and "allow -> require_approval: 1" in text
    assert "executed without approval then, held or denied now: 3" in text


def test_the_recorded_observations_feed_cross_record_constraints(traced, registry):
    """The dispute's claimed weight must equal the scan read earlier in the same case: it only
    passes if the replay hands the policy the case's recorded reads."""
    replayed = _mine(policy_what_if(traced.root, traced.policy, registry), traced)
    (dispute,) = [r for r in replayed if r.tool == "tms_open_weight_dispute"]
    assert dispute.now == "allow", dispute.reasons


def test_since_filters_and_an_empty_history_says_so(traced, registry, tmp_path):
    from datetime import UTC, datetime, timedelta

    future = datetime.now(UTC) + timedelta(days=1)
    assert policy_what_if(traced.root, traced.policy, registry, since=future) == []
    assert render_policy_what_if([]) == "no traced actions to replay"


def test_cli_policy_what_if(traced, tmp_path, capsys):
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(_policy(lambda tools: tools.pop("wms_get_shipment"))
                                   .model_dump(mode="json", exclude_none=True)))
    assert main(["policy", "what-if", str(path), "--traces", str(traced.root)]) == 0
    assert "allow -> deny" in capsys.readouterr().out
    assert main(["policy", "what-if", str(path), "--traces", str(traced.root), "--since", "yesterday"]) == 2
    assert "not an ISO date" in capsys.readouterr().err
    assert main(["policy", "what-if", str(tmp_path / "missing.yaml"), "--traces", str(traced.root)]) == 1  # a runtime failure
