"""A decision that lands while the task that paused its case is still ending (the pause stored
and shown, its trace event still being written) resumes the case once that task has ended: it is
never dropped, leaving the case waiting for a decision already made (seen once in 1,800
supervised cases of a real-engine ladder run)."""

from __future__ import annotations

import asyncio

from opsagent.agents.case import CaseStatus
from opsagent.agents.tracing.records import CaseEvent
from opsagent.cluster.case_book import CaseBook
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.identity import Identity, Role
from tests.fakes.book_ports import DescribedPlanner, HoldingPolicy, ListTracer, held_registry, report

ALICE = Identity(name="alice", roles=frozenset({Role.approver}))


class _SlowPauseTracer(ListTracer):
    """Holds the export of the case's `awaiting_approval` event until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.pausing, self.release = asyncio.Event(), asyncio.Event()

    async def export(self, events) -> None:
        if any(isinstance(e, CaseEvent) and e.status == "awaiting_approval" for e in events):
            self.pausing.set()
            await self.release.wait()
        await super().export(events)


def test_a_decision_made_while_the_pause_is_still_being_traced_resumes_the_case() -> None:
    async def scenario():
        approvals, tracer = ApprovalStore(":memory:"), _SlowPauseTracer()
        book = CaseBook(DescribedPlanner(), HoldingPolicy(approvals), None, tracer, held_registry())
        case_id = (await book.submit(report("hold", 1))).entry.case.case_id
        await asyncio.wait_for(tracer.pausing.wait(), 10)
        case = book.get(case_id)
        assert case.status == CaseStatus.awaiting_approval  # shown as waiting: an approver decides
        held = approvals.get(case.steps[-1].approval_id)
        approvals.decide(held.approval_id, identity=ALICE, approve=False, args_digest=held.args_digest,
                         reason="not this one")
        await book.resume(case_id)  # the front door's resume, while the pausing task still runs
        tracer.release.set()
        for _ in range(500):
            if book.get(case_id).status.final:
                break
            await asyncio.sleep(0.01)
        assert await book.drain(5) == 0
        return book.get(case_id)

    case = asyncio.run(scenario())
    assert case.status == CaseStatus.escalated, case.reason  # told of the rejection, it escalated
    assert case.steps[-1].error and "rejected by alice" in case.steps[-1].error
