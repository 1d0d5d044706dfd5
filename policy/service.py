"""The policy as a service: decisions, the approvals that release held actions, and the classes'
autonomy modes.

A held (`require_approval`) action becomes `allow` only when an approval for exactly that action
(case, step, arguments digest) has been granted by a human approver; the check chain still runs
first under the current policy, so a policy tightened since the approval still denies. A class's
mode is changed only by an admin (`set_mode`), for a class the policy lists.
"""

from __future__ import annotations

from typing import Any

from opsagent.errors import AutonomyError
from opsagent.policy.approvals import ApprovalRequest, ApprovalStatus, ApprovalStore
from opsagent.policy.autonomy import AutonomyStore
from opsagent.policy.config import PolicyConfig
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.identity import Identity, Role, require
from opsagent.policy.modes import ClassMode, Mode, ModeChange
from opsagent.policy.records import Permit, PolicyDecision, ToolCallRequest


class PolicyService:
    """What the policy actor serves: the engine (with its autonomy store) plus the durable
    approval store."""

    def __init__(self, engine: PolicyEngine, approvals: ApprovalStore) -> None:
        self.engine = engine
        self.approvals = approvals

    def allowed_tools(self, exception_type: str) -> list[str]:
        return self.engine.allowed_tools(exception_type)

    def authorize(self, request: ToolCallRequest) -> PolicyDecision:
        """Authorize a call: an allow carries a permit (and reserves against the limits); a held
        action is allowed only with a human approval of exactly these arguments. (Deciding
        without reserving or issuing anything: `PolicyEngine.decide`.)"""
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
        """Store the held action with its preview; the same action asked twice is one request,
        and it supersedes other pending requests of the case's step."""
        return self.approvals.request(
            case_id=request.case_id, exception_type=request.exception_type, step=request.step,
            tool=request.tool, args=request.args, args_digest=decision.args_digest,
            risk=decision.risk, reasons=decision.reasons, policy_version=decision.policy_version,
            preview=preview, submitted_by=request.submitted_by,
        )

    def get_approval(self, approval_id: str) -> ApprovalRequest:
        return self.approvals.get(approval_id)

    def withdraw_approvals(self, case_id: str, reason: str) -> list[ApprovalRequest]:
        """The case ended: its still-pending requests expire with `reason` (returned)."""
        return self.approvals.withdraw(case_id, reason)

    def list_approvals(self, status: ApprovalStatus | str | None = None) -> list[ApprovalRequest]:
        return self.approvals.list(status)

    def decide_approval(self, approval_id: str, *, identity: Identity, approve: bool,
                        args_digest: str, reason: str | None = None) -> ApprovalRequest:
        """Decide as `identity` (authenticated by the caller: the policy actor checks a
        credential first); separation of duties as the class's policy says."""
        current = self.approvals.get(approval_id)
        class_policy = self.engine.config.classes.get(current.exception_type)
        separate = class_policy.separation_of_duties if class_policy is not None else True
        return self.approvals.decide(approval_id, identity=identity, approve=approve,
                                     args_digest=args_digest, reason=reason, separation_of_duties=separate)

    def reload(self, config: PolicyConfig) -> str:
        """Swap the policy for every decision from now on; returns its version."""
        return self.engine.reload(config)

    def autonomy_status(self) -> list[ClassMode]:
        """Each class's autonomy mode now and its last change (evidence: `policy.gates.status`)."""
        config = self.engine.config
        if not isinstance(self.engine.autonomy, AutonomyStore):
            return [ClassMode(exception_type=name, mode=self.engine.mode(name), initial_mode=c.initial_mode,
                              since=None, last_change=None) for name, c in config.classes.items()]
        return self.engine.autonomy.classes(config)

    def set_mode(self, exception_type: str, mode: Mode | str, *, identity: Identity,
                 reason: str, expected: Mode | str | None = None) -> ModeChange:
        """Set a class's mode as `identity` (admin only: AuthError otherwise), recorded with why;
        `expected`: the mode the change was judged from (AutonomyError if it changed meanwhile)."""
        require(identity, Role.admin)
        if not isinstance(self.engine.autonomy, AutonomyStore):
            raise AutonomyError("this policy service has no autonomy store; modes come from the policy file")
        if exception_type not in self.engine.config.classes:
            raise AutonomyError(f"unknown exception class {exception_type!r} (policy lists: "
                                f"{', '.join(sorted(self.engine.config.classes)) or 'none'})")
        return self.engine.autonomy.set_mode(exception_type, mode, identity=identity, reason=reason,
                                             expected=expected)
