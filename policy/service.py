"""The policy as a service: decisions, and the approvals that release held actions.

A held (`require_approval`) action becomes `allow` only when an approval for exactly that action
(case, step, arguments digest) has been granted by a human approver; the check chain still runs
first under the current policy, so a policy tightened since the approval still denies.
"""

from __future__ import annotations

from typing import Any

from opsagent.policy.approvals import ApprovalRequest, ApprovalStatus, ApprovalStore
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.identity import Identity
from opsagent.policy.records import Permit, PolicyDecision, ToolCallRequest


class PolicyService:
    """What the policy actor serves: the engine plus the durable approval store."""

    def __init__(self, engine: PolicyEngine, approvals: ApprovalStore) -> None:
        self.engine = engine
        self.approvals = approvals

    def allowed_tools(self, exception_type: str) -> list[str]:
        return self.engine.allowed_tools(exception_type)

    def decide(self, request: ToolCallRequest) -> PolicyDecision:
        """Authorize a call: an allow carries a permit (and reserves against the limits); a held
        action is allowed only with a human approval of exactly these arguments."""
        decision = self.engine.authorize(request)
        if decision.verdict != "require_approval":
            return decision
        granted = self.approvals.approved(request.case_id, request.step, decision.args_digest)
        if granted is None:
            return decision
        return self.engine.authorize(request, approved_digest=granted.args_digest,
                                     approved_by=f"{granted.approver} ({granted.approval_id})")

    def settle(self, permit: Permit, *, executed: bool) -> str:
        """After the call: commit its reserved spend if it ran (or may have), else release it."""
        return self.engine.settle(permit, executed=executed)

    def request_approval(self, request: ToolCallRequest, decision: PolicyDecision,
                         preview: Any) -> ApprovalRequest:
        """Store the held action with its preview; the same action asked twice is one request."""
        return self.approvals.request(
            case_id=request.case_id, exception_type=request.exception_type, step=request.step,
            tool=request.tool, args=request.args, args_digest=decision.args_digest,
            risk=decision.risk, reasons=decision.reasons, policy_version=decision.policy_version,
            preview=preview,
        )

    def get_approval(self, approval_id: str) -> ApprovalRequest:
        return self.approvals.get(approval_id)

    def list_approvals(self, status: ApprovalStatus | str | None = None) -> list[ApprovalRequest]:
        return self.approvals.list(status)

    def decide_approval(self, approval_id: str, *, identity: Identity, approve: bool,
                        args_digest: str, reason: str | None = None) -> ApprovalRequest:
        return self.approvals.decide(approval_id, identity=identity, approve=approve,
                                     args_digest=args_digest, reason=reason)
