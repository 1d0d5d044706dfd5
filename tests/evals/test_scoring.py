"""The scorer: gold replay scores 1.0 and doing nothing 0.0 on every instance of every class; a
wrong end state, a missing required read or a wrong outcome each score 0."""

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
from opsagent.evals.catalogue import CLASSES, Instance
from opsagent.evals.gold import scripted_gold
from opsagent.evals.scoring import (
    ActionRecord, AgentRun, evaluate, replay_gold, score, snapshots,
)
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.identity import Identity, Role
from opsagent.policy.service import PolicyService
from tests.fakes.autonomy import promoted
from tests.fakes.planners import gold_calls

APPROVER = Identity(name="alice", roles=frozenset({Role.approver}))


def test_the_set_covers_every_class_and_variant(baselines):
    seen = {(i.exception_type, i.variant) for i in baselines.instances}
    assert seen == {(c.name, v) for c in CLASSES.values() for v in c.variants}


def test_gold_replay_scores_one_on_every_instance(baselines):
    for inst in baselines.instances:
        ref = baselines.reference[inst.instance_id]
        result = score(inst, baselines.gold[inst.instance_id], baselines.after, ref)
        assert result.score == 1.0, result


def test_doing_nothing_scores_zero_on_every_instance(baselines):
    for inst in baselines.instances:
        ref = baselines.reference[inst.instance_id]
        result = score(inst, baselines.nothing[inst.instance_id], baselines.before, ref)
        assert result.score == 0.0 and result.missing_actions and not result.outcome_ok, result
        # claiming the right outcome without doing anything does not help either
        claimed = AgentRun(instance_id=inst.instance_id, outcome=inst.gold.outcome)
        result = score(inst, claimed, baselines.before, ref)
        assert result.score == 0.0 and result.missing_actions
        if "ticket_id" in inst.entities:  # the ticket is neither resolved nor with a team
            assert not result.state_ok and any("tkt.tickets" in f for f in result.failed_assertions)


@pytest.fixture(scope="module")
def fresh(sets) -> dict[tuple[str, str], tuple[Instance, dict]]:
    """One planted instance per (class, variant) the edited-run tests use, with its gold state."""
    return {k: (inst, sets.reference[inst.instance_id]) for k, inst in sets.edited.items()}


def _run(platform, registry, inst: Instance, actions, outcome: str) -> AgentRun:
    """Execute `actions` (gold actions, possibly edited) on the session platform."""
    edited = inst.model_copy(update={"gold": inst.gold.model_copy(update={"actions": actions})})
    return replay_gold(edited, registry).model_copy(update={"outcome": outcome})


def test_wrong_end_state_scores_zero(platform, registry, fresh):
    inst, ref = fresh["damage_claim", "credit_small"]
    credit = next(a for a in inst.gold.actions if a.tool == "erp_issue_credit")
    wrong = credit.model_copy(update={"args": {**credit.args, "amount": round(credit.args["amount"] - 5, 2)}})
    run = _run(platform, registry, inst, [wrong if a is credit else a for a in inst.gold.actions], "resolved")
    result = score(inst, run, snapshots(platform), ref)
    assert result.score == 0.0 and not result.state_ok
    assert any("credit_notes" in f for f in result.failed_assertions)
    assert result.missing_actions == [credit.label()]

    # every gold action made, right outcome, but one write too many: the state gives it away
    stock, ref = fresh["stock_count_mismatch", "recount"]
    extra = {"site": stock.entities["site"], "sku": stock.entities["sku"], "book_quantity": 0,
             "reason": "zero it"}
    run = _run(platform, registry, stock, list(stock.gold.actions), "resolved")
    run.actions.append(ActionRecord(tool="erp_adjust_book_quantity", args=extra))
    assert _call(registry, "erp_adjust_book_quantity", extra)
    result = score(stock, run, snapshots(platform), ref)
    assert result.score == 0.0 and not result.state_ok and not result.missing_actions
    assert any("erp.inventory" in d for d in result.state_diff)


def test_missing_required_read_scores_zero(platform, registry, fresh):
    inst, ref = fresh["address_rejected", "correct_from_erp"]
    first, *rest = inst.gold.actions
    result = score(inst, _run(platform, registry, inst, rest, "resolved"), snapshots(platform), ref)
    assert result.score == 0.0 and result.state_ok and not result.failed_assertions
    assert result.missing_actions == [first.label()]


def test_wrong_outcome_scores_zero_and_extra_reads_cost_nothing(platform, registry, fresh):
    inst, ref = fresh["missed_pickup", "reschedule"]
    extra = inst.gold.actions[0]
    run = _run(platform, registry, inst, [extra, *inst.gold.actions], "resolved")
    assert score(inst, run, snapshots(platform), ref).score == 1.0
    flipped = run.model_copy(update={"outcome": "escalated"})
    result = score(inst, flipped, snapshots(platform), ref)
    assert result.score == 0.0 and not result.outcome_ok and result.state_ok


def test_escalating_to_the_wrong_team_scores_zero(platform, registry, fresh):
    inst, ref = fresh["tracking_stuck", "declared_lost"]
    actions = [a.model_copy(update={"args": {**a.args, "team": "finance"}})
               if a.tool == "tkt_assign_ticket" else a for a in inst.gold.actions]
    result = score(inst, _run(platform, registry, inst, actions, "escalated"), snapshots(platform), ref)
    assert result.score == 0.0 and not result.state_ok and len(result.missing_actions) == 1


def test_gold_through_the_agent_runner_scores_one(platform, registry, sets):
    """Every variant of every class, run as scripted planner output through the real planner,
    policy (approving held steps as a human would) and executor, scores 1.0."""
    instances = sets.runner
    books = builtin_playbooks()
    config = load_default_policy()
    policy = PolicyEngine(config, registry, autonomy=promoted(config))  # the classes ship in shadow
    service = PolicyService(policy, ApprovalStore(":memory:"))
    executor = Executor(registry, policy.verifier)
    held = []

    async def run(inst: Instance) -> AgentRun:
        book = books[inst.exception_type]
        engine = ScriptedEngine([scripted_gold(inst, book)]
                                * await gold_calls(inst, book, registry, service.allowed_tools(inst.exception_type)))
        runner = CaseRunner(Planner(engine, books, registry), LocalPolicy(service), executor,
                            LocalTracer(InMemoryExporter()), registry, max_steps=8)
        report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                 entities=inst.entities)
        case = await runner.run(Case(report=report))
        while case.status == CaseStatus.awaiting_approval:
            approval = service.get_approval(case.steps[-1].approval_id)
            held.append((inst.variant, approval.tool, approval.risk))
            service.decide_approval(approval.approval_id, identity=APPROVER, approve=True,
                                    args_digest=approval.args_digest)
            case = await runner.resume(case)
        run = AgentRun.from_case(inst.instance_id, case)
        assert AgentRun.from_case(inst.instance_id, case.model_dump(mode="json")) == run  # the API's view
        return run

    async def run_all() -> dict[str, AgentRun]:
        try:
            return {i.instance_id: await run(i) for i in instances}
        finally:
            await executor.close()

    runs = asyncio.run(run_all())
    results = evaluate(instances, lambda inst, _: runs[inst.instance_id], platform, sets.reference)
    assert [r.score for r in results] == [1.0] * len(instances), [r for r in results if r.score < 1]
    assert sorted(held) == [("book_to_count", "erp_adjust_book_quantity", "high"),
                            ("credit_large", "erp_issue_credit", "high"),
                            ("refund_paid", "erp_issue_refund", "high")]


def _call(registry, tool: str, args: dict) -> bool:
    from opsagent.evals.scoring import _execute

    return asyncio.run(_execute(registry, [(tool, args)], f"extra-{tool}-{args.get('sku')}"))[0].ok
