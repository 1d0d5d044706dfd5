"""Automatic demotion in a running system on Ray: the policy actor's gate watch demotes a
supervised class whose approvals keep being rejected, without anyone running a command."""

from __future__ import annotations

import time
from typing import Any

import pytest
import ray

from opsagent.agents.case import ExceptionReport
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.cluster.config import SystemConfig
from opsagent.cluster.system import OpsAgentSystem
from opsagent.evals.gold import gold_step
from opsagent.policy.autonomy import GATES_ACTOR
from opsagent.policy.config import PolicyConfig, load_default_policy
from opsagent.tools.platform import inject_weight_mismatch
from opsagent.evals.bench.soak import GoldScriptedEngine
from tests.fakes.autonomy import credential

pytestmark = pytest.mark.ray

GATES = {"min_cases": 2, "demote_min_cases": 2, "demote_window": 2}
"""Small enough for two cases: 0/2 correct has a Wilson 95 % upper bound of 0.66 < 0.85."""


def _gold_then_escalate(request: Any) -> dict[str, Any]:
    """Gold steps; once a human did not approve the write, finish escalated."""
    if "did not approve" in request.messages[-1].content:
        return {"evidence": {"scale_check": "passed"}, "tool": "finish", "status": "escalated",
                "reason": "The dispute was not approved; a human takes over."}
    return gold_step(request)


def _policy() -> PolicyConfig:
    data = load_default_policy().model_dump(mode="json")
    data["classes"]["weight_mismatch"]["gates"] = {**data["gates"], **GATES}
    return PolicyConfig.model_validate(data)


def _until(read, done, what: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout_s} s: {value}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def system(ray_runtime, platform, tmp_path_factory):
    # warm-up, then per case: two reads, the dispute (held: supervised), the finish after rejection
    engine = GoldScriptedEngine(_gold_then_escalate)  # copied into the planner actor: answers every call
    root = tmp_path_factory.mktemp("gates")
    config = SystemConfig(traces_dir=root / "traces", state_dir=root / "state", executors=1,
                          gate_check_interval_s=0.5)
    running = OpsAgentSystem(config, platform.registry(), engine=engine, policy=_policy(),
                             playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]}).start()
    ray.get(running.handles["policy"].set_mode.remote("weight_mismatch", "supervised", credential(running.tokens_path),
                                                      "test: every write waits for a human"))
    yield running
    running.stop()


def test_a_supervised_class_whose_approvals_are_rejected_is_demoted(system, platform):
    policy, cases = system.handles["policy"], system.handles["cases"]
    approver = credential(system.tokens_path, "rita", ["approver"])
    instances = inject_weight_mismatch(platform, count=2, seed=9301, suspect_share=0.0)
    ids = []
    for inst in instances:
        report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                 entities=inst.entities)
        ids.append(ray.get(cases.submit.remote(report, "tester")).entry.case.case_id)
    for case_id in ids:
        case = _until(lambda cid=case_id: ray.get(cases.entry.remote(cid)).case,
                      lambda c: c.status.value == "awaiting_approval", f"{case_id} held")
        approval = ray.get(policy.get_approval.remote(case.steps[-1].approval_id))
        assert approval.tool == "tms_open_weight_dispute"  # low risk, held because supervised
        ray.get(policy.decide_approval.remote(approval.approval_id, approver, False, approval.args_digest,
                                              "wrong shipment"))
        ray.get(cases.resume.remote(case_id))
    for case_id in ids:
        case = _until(lambda cid=case_id: ray.get(cases.entry.remote(cid)).case,
                      lambda c: c.status.final, f"{case_id} finished")
        assert case.status.value == "escalated", case.reason

    def weight_mismatch():
        return next(m for m in ray.get(policy.autonomy_status.remote()) if m.exception_type == "weight_mismatch")

    # nobody runs a command: the watch sees the published traces and demotes the class
    now = _until(weight_mismatch, lambda m: m.mode.value == "shadow", "the demotion")
    change = now.last_change
    assert (change.from_mode, change.to_mode, change.actor, change.automatic) == (
        "supervised", "shadow", GATES_ACTOR, True)
    assert "0/2" in change.reason and "upper bound" in change.reason
