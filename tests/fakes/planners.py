"""Scripted planner behaviours for tests that run the planner inside a Ray actor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opsagent.agents.engines.base import GenerationRequest
from opsagent.evals.gold import conversation, gold_step


def gold_except(high_risk: set[str]) -> Callable[[GenerationRequest], dict[str, Any]]:
    """Gold steps, except that for the shipments in `high_risk` the planner proposes an
    irreversible billed-weight change once both records were read."""

    def respond(request: GenerationRequest) -> dict[str, Any]:
        _, entities, results = conversation(request)
        sid = entities.get("shipment_id")
        if sid in high_risk and {"wms_get_shipment", "tms_get_shipment"} <= set(results):
            evidence = {"scale_check": results["wms_get_shipment"]["scale_check"]}
            if "tms_adjust_billed_weight" in results:
                return {"evidence": evidence, "tool": "finish", "status": "escalated",
                        "reason": "Billed weight changed after approval."}
            if "did not approve" in request.messages[-1].content:
                return {"evidence": evidence, "tool": "finish", "status": "escalated",
                        "reason": "The rebill was rejected."}
            return {"evidence": evidence, "tool": "tms_adjust_billed_weight",
                    "args": {"shipment_id": sid, "billed_weight_kg": 0.5, "reason": "rebill"}}
        return gold_step(request)

    return respond


class RawPlanner:
    """A planner port that hands the runner whatever steps it is given, unchecked: it stands for
    a buggy or compromised planner, so tests can show the policy is the boundary on its own."""

    def __init__(self, steps: list[dict[str, Any]]) -> None:
        self.steps = list(steps)
        self.calls = 0

    async def plan(self, case: Any, allowed_tools: list[str]) -> Any:
        from opsagent.agents.planner import PlannerTurn
        from opsagent.agents.step_schema import PlannedStep

        self.calls += 1
        if not self.steps:
            raise AssertionError(f"RawPlanner: no step left (call {self.calls})")
        return PlannerTurn(step=PlannedStep.model_validate(self.steps.pop(0)))


def gold_calls(instance: Any, playbook: Any) -> int:
    """How many model calls the gold run of a catalogue `instance` takes: one per gold action,
    plus the finish unless the last action is one the playbook concludes on by itself."""
    actions = instance.gold.actions
    concluded = bool(actions) and actions[-1].tool in {*playbook.resolve_on, *playbook.escalate_on}
    return len(actions) + (0 if concluded else 1)
