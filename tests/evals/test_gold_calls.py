"""`gold_calls` sizes a scripted engine to exactly the model calls of a catalogue instance's gold
run: every variant of every class, on several seeds, through the real planner (its SOP rules
included), policy (held steps approved as a human would) and executor, ends with the gold outcome
and the script used up."""

from __future__ import annotations

import asyncio

import pytest

from opsagent.agents.case import Case, CaseStatus, ExceptionReport
from opsagent.agents.engines import ScriptedEngine
from opsagent.agents.executor import Executor
from opsagent.agents.local import LocalPolicy, LocalTracer
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.runner import CaseRunner
from opsagent.agents.tracing.exporters import InMemoryExporter
from opsagent.evals.catalogue import CLASSES, make, plant
from opsagent.evals.gold import scripted_gold
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.identity import Identity, Role
from opsagent.policy.service import PolicyService
from tests.fakes.autonomy import promoted
from tests.fakes.planners import gold_calls

APPROVER = Identity(name="alice", roles=frozenset({Role.approver}))


@pytest.mark.parametrize("seed", [46_000, 46_001, 46_002])
def test_a_script_of_gold_calls_steps_is_used_up_by_every_gold_run(platform, registry, seed):
    instances = []
    for name, cls in CLASSES.items():
        pool = make(name, seed=seed, count=3 * len(cls.variants))
        instances += [next(i for i in pool if i.variant == v) for v in cls.variants]
    plant(instances, platform)
    books = builtin_playbooks()
    config = load_default_policy()
    policy = PolicyEngine(config, registry, autonomy=promoted(config))  # the classes ship in shadow
    service = PolicyService(policy, ApprovalStore(":memory:"))
    executor = Executor(registry, policy.verifier)
    by_rule: list[str] = []

    async def run(inst) -> None:
        book = books[inst.exception_type]
        calls = await gold_calls(inst, book, registry, service.allowed_tools(inst.exception_type))
        engine = ScriptedEngine([scripted_gold(inst, book)] * calls)
        runner = CaseRunner(Planner(engine, books, registry), LocalPolicy(service), executor,
                            LocalTracer(InMemoryExporter()), registry, max_steps=8)
        report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                 entities=inst.entities)
        case = await runner.run(Case(report=report))
        while case.status == CaseStatus.awaiting_approval:
            approval = service.get_approval(case.steps[-1].approval_id)
            service.decide_approval(approval.approval_id, identity=APPROVER, approve=True,
                                    args_digest=approval.args_digest)
            case = await runner.resume(case)
        assert case.status == inst.gold.outcome, (inst.instance_id, case.status, case.reason)
        assert [s.tool for s in case.steps] == [a.tool for a in inst.gold.actions], inst.instance_id
        engine.assert_done()  # every step of the script was asked for
        assert case.planner_calls == calls, inst.instance_id
        steps = len(inst.gold.actions) + 1  # each gold action and the finish
        if calls < steps - (inst.gold.actions[-1].tool in {*book.resolve_on, *book.escalate_on}):
            by_rule.append(inst.instance_id)  # a turn the old count would have scripted

    async def run_all() -> None:
        try:
            for inst in instances:
                await run(inst)
        finally:
            await executor.close()

    asyncio.run(run_all())
    # the SOP rules or a single candidate decide some turns without the model: a count of one
    # call per gold action (plus the finish) would leave those steps unused
    assert by_rule, "no gold run had a turn decided without the model"
