"""The planner's confidence travels with each step to the policy and into the traces; a class's
`min_confidence` holds an unsure autonomous write for a human."""

from __future__ import annotations

import math

import pytest

from opsagent.agents.case import CaseStatus
from opsagent.agents.tracing.records import PlannerCallEvent
from opsagent.evals.gold import gold_step
from opsagent.policy.config import PolicyConfig, load_default_policy


def _policy(floor: float) -> PolicyConfig:
    data = load_default_policy().model_dump(mode="json")
    data["classes"]["weight_mismatch"]["min_confidence"] = floor
    return PolicyConfig.model_validate(data)


@pytest.mark.parametrize(("sure", "status"), [(0.9, CaseStatus.resolved), (0.5, CaseStatus.awaiting_approval)])
def test_an_unsure_write_waits_for_a_human_and_a_sure_one_runs(harness, instance, sure, status):
    h = harness([gold_step] * 3, policy=_policy(0.8), token_logprob=math.log(sure))
    case = h.run(instance(scale_ok=True))
    assert case.status == status, case.reason
    assert [s.confidence for s in case.steps] == pytest.approx([sure] * 3)
    model_calls = [c for c in h.traces.of_type(PlannerCallEvent) if c.decided_by == "model"]
    assert [c.confidence for c in model_calls] == pytest.approx([sure] * 3)
    reads, write = case.steps[:2], case.steps[2]
    assert all(s.verdict == "allow" and s.executed for s in reads)  # reads are never held
    if status == CaseStatus.awaiting_approval:
        assert write.verdict == "require_approval" and not write.executed and write.approval_id
        assert write.reasons[0].startswith(f"the planner's confidence in {write.tool} is 0.50, below 0.80")


def test_without_log_probabilities_the_floor_holds_every_autonomous_write(harness, instance):
    """An engine that writes whole steps and reports no log-probabilities (schema decoding, as
    with most OpenAI-compatible servers): confidence unknown, so the floor holds the write."""
    h = harness([gold_step] * 3, policy=_policy(0.5), decoding="schema")
    case = h.run(instance(scale_ok=True))
    assert case.status == CaseStatus.awaiting_approval
    assert case.steps[-1].confidence is None and "is unknown" in case.steps[-1].reasons[0]
