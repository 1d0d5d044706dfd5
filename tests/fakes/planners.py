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


async def gold_calls(instance: Any, playbook: Any, registry: Any, allowed: list[str],
                     **planner_options: Any) -> int:
    """How many model calls (script steps) the gold run of a planted catalogue `instance` takes.

    The real planner plans each turn of the gold (`scripted_gold`) offering `allowed`, so what it
    decides without the model is decided by its own code: the finish after a concluding tool, a
    single candidate left, and the playbook's SOP rules (`agents/playbooks/rules.py`) on the
    evidence read. Reads go to the systems (the instance must be planted; they change nothing);
    writes are not sent: each counts as succeeded, with its dry run's result where the tool has
    one. (Every playbook pins its evidence from reads, so that is all a rule can see.)
    `planner_options`: the `Planner`'s keyword arguments in the run being sized (its decoding)."""
    from opsagent.agents.case import Case, ExceptionReport, Step
    from opsagent.agents.executor import Executor
    from opsagent.agents.planner import Planner
    from opsagent.agents.runner import would_be_result
    from opsagent.agents.step_schema import FINISH
    from opsagent.evals.bench.soak import GoldScriptedEngine
    from opsagent.evals.gold import scripted_gold
    from opsagent.policy.permits import PermitSigner

    planner = Planner(GoldScriptedEngine(scripted_gold(instance, playbook)),
                      {instance.exception_type: playbook}, registry, **planner_options)
    executor = Executor(registry, PermitSigner.generate())  # reads and dry runs need no permit
    case = Case(report=ExceptionReport(exception_type=instance.exception_type,
                                       description=instance.description, entities=instance.entities))
    calls = 0
    try:
        for _ in range(len(instance.gold.actions) + 1):
            turn = await planner.plan(case, allowed)
            calls += turn.decided_by == "model"
            if turn.step is None:
                raise AssertionError(f"gold_calls: the planner's turn failed: {turn.error}")
            if turn.step.tool == FINISH:
                return calls
            step = Step(step=len(case.steps) + 1, tool=turn.step.tool, args=turn.step.args,
                        evidence=turn.step.evidence, verdict="allow", executed=True)
            spec = registry.get(step.tool)
            if not spec.writes:
                result = await executor.execute(step.tool, step.args, case_id=case.case_id, step=step.step)
                step.ok, step.result, step.error = result.ok, result.body, result.error
            else:
                preview = (await executor.execute(step.tool, step.args, case_id=case.case_id,
                                                  step=step.step, dry_run=True)
                           if spec.supports_dry_run else None)
                step.ok = True
                step.result = would_be_result(preview.body) if preview is not None and preview.ok else {}
            case.steps.append(step)
    finally:
        await executor.close()
    raise AssertionError(f"gold_calls: {instance.instance_id} did not finish after its gold actions")
