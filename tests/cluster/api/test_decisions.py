"""An approval decision through the front door's service: once sent to the policy, the decision
and the case's resume run to the end even when the caller's request is cancelled (Serve cancels
the request of a client that went away)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opsagent.agents.case import Case, CaseStatus, ExceptionReport, Step
from opsagent.cluster.api.service import OpsService
from opsagent.cluster.case_records import CaseEntry
from opsagent.policy.approvals import ApprovalRequest, ApprovalStatus
from opsagent.policy.identity import Identity, Role

APPROVER = Identity(name="alice", roles=frozenset({Role.approver}))


class _Method:
    """`actor.method.remote(...)` awaited, as `call_actor` calls it."""

    def __init__(self, fn: Any) -> None:
        self.remote = fn


class _Actors:
    """The policy and case manager actors, as far as a decision uses them; the policy's decision
    waits for `release`, so a test can cancel the request while it is in flight."""

    def __init__(self) -> None:
        now = datetime.now(UTC)
        self.approval = ApprovalRequest(
            approval_id="apr-1", case_id="case-1", exception_type="missed_pickup", step=2,
            tool="tms_reschedule_pickup", args={"pickup_id": "PU-1"}, args_digest="d" * 64, risk="low",
            reasons=["supervised"], policy_version="v1", status=ApprovalStatus.pending,
            requested_at=now, expires_at=now + timedelta(hours=1))
        case = Case(case_id="case-1", status=CaseStatus.awaiting_approval,
                    report=ExceptionReport(exception_type="missed_pickup", description="x",
                                           entities={"pickup_id": "PU-1"}))
        case.steps.append(Step(step=2, tool="tms_reschedule_pickup", verdict="require_approval",
                               approval_id="apr-1"))
        self.case_entry = CaseEntry(case=case)
        self.release, self.deciding = asyncio.Event(), asyncio.Event()
        self.resumed: list[str] = []
        self.get_approval = _Method(self._get_approval)
        self.decide_approval = _Method(self._decide_approval)
        self.entry = _Method(self._entry)
        self.resume = _Method(self._resume)

    async def _get_approval(self, approval_id: str) -> ApprovalRequest:
        return self.approval

    async def _entry(self, case_id: str) -> CaseEntry:
        return self.case_entry

    async def _decide_approval(self, approval_id, credential, approve, args_digest, reason) -> ApprovalRequest:
        self.deciding.set()
        await self.release.wait()
        self.approval = self.approval.model_copy(update={
            "status": ApprovalStatus.approved, "approver": "alice", "decided_at": datetime.now(UTC)})
        return self.approval

    async def _resume(self, case_id: str) -> None:
        self.resumed.append(case_id)


def test_a_decision_whose_request_is_cancelled_still_resumes_its_case():
    async def scenario() -> None:
        actors = _Actors()
        service = OpsService(cases=actors, policy=actors, traces=None)  # type: ignore[arg-type]
        request = asyncio.create_task(service.decide(
            APPROVER, "apr-1", approve=True, args_digest="d" * 64, reason=None, credential=None))  # type: ignore[arg-type]
        await actors.deciding.wait()
        request.cancel()  # the client went away while the policy was recording the decision
        with pytest.raises(asyncio.CancelledError):
            await request
        actors.release.set()
        for _ in range(100):
            if actors.resumed:
                break
            await asyncio.sleep(0.01)
        assert actors.approval.status == ApprovalStatus.approved
        assert actors.resumed == ["case-1"]

    asyncio.run(scenario())
