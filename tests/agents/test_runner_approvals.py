"""No approval is left pending that nothing will run: the runner traces the requests a new one
superseded, and when a case ends it withdraws (and traces) the case's pending requests."""

from __future__ import annotations

import asyncio
import logging

from opsagent.agents.case import Case, CaseStatus
from opsagent.agents.runner import CaseRunner
from opsagent.agents.tracing.records import ApprovalEvent, CaseEvent
from opsagent.policy.approvals import ApprovalStatus
from opsagent.policy.records import args_digest
from tests.fakes.book_ports import HELD_TOOL, DescribedPlanner, HoldingPolicy, ListTracer, held_registry, report


def _runner(policy: HoldingPolicy, planner: DescribedPlanner | None = None) -> tuple[CaseRunner, ListTracer]:
    tracer = ListTracer()
    return CaseRunner(planner or DescribedPlanner(), policy, None, tracer, held_registry()), tracer


def _orphan(policy: HoldingPolicy, case: Case, step: int = 1) -> str:
    """A request stored for the case by a case manager that died before recording it."""
    args = {"billed_weight_kg": 9.9}
    return policy.store.request(
        case_id=case.case_id, exception_type=case.report.exception_type, step=step, tool=HELD_TOOL,
        args=args, args_digest=args_digest(HELD_TOOL, args), risk="high", reasons=[],
        policy_version="test", preview=None).approval_id


def _approvals(tracer: ListTracer) -> list[tuple[str, str, str | None]]:
    return [(e.approval_id, e.status, e.reason) for e in tracer.events if isinstance(e, ApprovalEvent)]


def test_a_case_that_ends_withdraws_its_pending_approvals_before_its_final_status():
    policy = HoldingPolicy()
    case = Case(report=report("escalate", 1))
    orphan = _orphan(policy, case)
    runner, tracer = _runner(policy)
    asyncio.run(runner.run(case))
    assert case.status == CaseStatus.escalated
    withdrawn = policy.store.get(orphan)
    assert withdrawn.status == ApprovalStatus.expired
    assert withdrawn.reason == "withdrawn: the case ended escalated"
    assert _approvals(tracer) == [(orphan, "expired", "withdrawn: the case ended escalated")]
    kinds = [type(e).__name__ for e in tracer.events]
    assert kinds.index("ApprovalEvent") < max(i for i, e in enumerate(tracer.events)
                                              if isinstance(e, CaseEvent) and e.status == "escalated")


def test_a_re_planned_step_supersedes_the_orphan_and_traces_it():
    policy = HoldingPolicy()
    case = Case(report=report("hold", 1))
    orphan = _orphan(policy, case)
    runner, tracer = _runner(policy)
    asyncio.run(runner.run(case))
    assert case.status == CaseStatus.awaiting_approval
    held = case.steps[-1].approval_id
    assert policy.store.get(held).supersedes == [orphan]
    assert _approvals(tracer) == [(orphan, "expired", f"superseded by {held}"), (held, "pending", None)]
    assert [a.approval_id for a in policy.store.list("pending")] == [held]


def test_a_case_ends_even_when_the_policy_cannot_withdraw(caplog):
    policy = HoldingPolicy(withdraw_fails=True)
    case = Case(report=report("resolve", 1))
    orphan = _orphan(policy, case)
    runner, tracer = _runner(policy)
    with caplog.at_level(logging.ERROR):
        asyncio.run(runner.run(case))
    assert case.status == CaseStatus.resolved
    assert policy.store.get(orphan).status == ApprovalStatus.pending
    assert "cannot withdraw the pending approvals" in caplog.text
    assert _approvals(tracer) == []


def test_a_case_with_nothing_pending_traces_no_approval():
    policy = HoldingPolicy()
    runner, tracer = _runner(policy)
    case = asyncio.run(runner.run(Case(report=report("resolve", 1))))
    assert case.status == CaseStatus.resolved and _approvals(tracer) == []
