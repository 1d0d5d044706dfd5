"""Approvals a dead case manager left behind: it stored a request and died before recording it;
the restarted one re-plans the step. Whatever the planner decides then, nothing stays pending
that nothing will run, and the stale request cannot be approved."""

from __future__ import annotations

import asyncio

import pytest

from opsagent.agents.case import CaseStatus
from opsagent.cluster.case_book import CaseBook
from opsagent.cluster.case_store import CaseStore
from opsagent.errors import ApprovalError
from opsagent.policy.approvals import ApprovalStatus, ApprovalStore
from opsagent.policy.identity import Identity, Role
from tests.fakes.book_ports import DescribedPlanner, HoldingPolicy, ListTracer, held_registry, report

ALICE = Identity(name="alice", roles=frozenset({Role.approver}))


def _book(root, policy, planner) -> CaseBook:
    return CaseBook(planner, policy, None, ListTracer(), held_registry(),
                    store=CaseStore(root / "cases.sqlite"))


async def _die_after_the_request(root, approvals: ApprovalStore) -> str:
    """Run a case until its approval request is stored, then stop it where it stands."""
    policy = HoldingPolicy(approvals, hang_after_request=True)
    book = _book(root, policy, DescribedPlanner())
    case_id = (await book.submit(report("hold", 1))).entry.case.case_id
    await asyncio.wait_for(policy.reached.wait(), 10)
    for task in list(book._tasks.values()):
        task.cancel()
    await asyncio.gather(*book._tasks.values(), return_exceptions=True)
    return case_id


def test_a_re_planned_step_with_other_arguments_supersedes_the_first_request(tmp_path):
    approvals = ApprovalStore(tmp_path / "approvals.sqlite")

    async def scenario():
        case_id = await _die_after_the_request(tmp_path, approvals)
        [first] = approvals.list("pending")
        planner = DescribedPlanner(args={"hold #1": {"billed_weight_kg": 2.0}})
        book = _book(tmp_path, HoldingPolicy(approvals), planner)
        await book.drain(10)
        case = book.get(case_id)
        assert case.status == CaseStatus.awaiting_approval
        with pytest.raises(ApprovalError, match="superseded by"):
            approvals.decide(first.approval_id, identity=ALICE, approve=True,
                             args_digest=first.args_digest)
        await book.cancel(case_id, "ops", "handled by phone")
        return first, case, book

    first, case, book = asyncio.run(scenario())
    second = approvals.get(case.steps[-1].approval_id)
    assert second.approval_id != first.approval_id and second.supersedes == [first.approval_id]
    assert second.args == {"billed_weight_kg": 2.0}
    assert approvals.get(first.approval_id).reason == f"superseded by {second.approval_id}"
    assert second.status == ApprovalStatus.expired  # the cancelled case withdrew it
    assert second.reason == "withdrawn: the case ended escalated"
    assert approvals.list("pending") == []
    assert book.get(case.case_id).status == CaseStatus.escalated


def test_a_re_planned_case_that_finishes_instead_withdraws_the_first_request(tmp_path):
    approvals = ApprovalStore(tmp_path / "approvals.sqlite")

    async def scenario():
        case_id = await _die_after_the_request(tmp_path, approvals)
        [first] = approvals.list("pending")
        book = _book(tmp_path, HoldingPolicy(approvals), DescribedPlanner(instead={"hold #1": "resolve"}))
        await book.drain(10)
        return first, book.get(case_id)

    first, case = asyncio.run(scenario())
    assert case.status == CaseStatus.resolved and case.steps == []
    orphan = approvals.get(first.approval_id)
    assert orphan.status == ApprovalStatus.expired
    assert orphan.reason == "withdrawn: the case ended resolved"
    with pytest.raises(ApprovalError, match="withdrawn"):
        approvals.decide(first.approval_id, identity=ALICE, approve=True, args_digest=first.args_digest)
