"""In-process adapters of the case runner's ports (`agents/ports.py`): run a case without Ray
(tests, recording examples). The planner and executor need none: `Planner` and `Executor` are
called as they are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opsagent.agents.tracing.exporters import TraceExporter
from opsagent.agents.tracing.records import TraceEvent
from opsagent.policy.approvals import ApprovalRequest, ApprovalStore
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.identity import Identity
from opsagent.policy.modes import ClassMode, ModeChange
from opsagent.policy.records import Permit, PolicyDecision, ToolCallRequest
from opsagent.policy.service import PolicyService


class LocalPolicy:
    """The policy service called in-process, behind the runner's async port (plus the autonomy
    calls the policy actor serves, for in-process front doors and tools)."""

    def __init__(self, service: PolicyService | PolicyEngine) -> None:
        if isinstance(service, PolicyEngine):  # approvals kept in memory for this process only
            service = PolicyService(service, ApprovalStore(":memory:"))
        self.service = service

    async def allowed_tools(self, exception_type: str) -> list[str]:
        return self.service.allowed_tools(exception_type)

    async def authorize(self, request: ToolCallRequest) -> PolicyDecision:
        return self.service.authorize(request)

    async def request_approval(self, request: ToolCallRequest, decision: PolicyDecision,
                               preview: Any) -> ApprovalRequest:
        return self.service.request_approval(request, decision, preview)

    async def get_approval(self, approval_id: str) -> ApprovalRequest:
        return self.service.get_approval(approval_id)

    async def withdraw_approvals(self, case_id: str, reason: str) -> list[ApprovalRequest]:
        return self.service.withdraw_approvals(case_id, reason)

    async def settle(self, permit: Permit, *, executed: bool) -> str:
        return self.service.settle(permit, executed=executed)

    async def autonomy_status(self) -> list[ClassMode]:
        return self.service.autonomy_status()

    async def set_mode(self, exception_type: str, mode: str, identity: Identity, reason: str) -> ModeChange:
        return self.service.set_mode(exception_type, mode, identity=identity, reason=reason)


class LocalTracer:
    """Any trace exporter behind the runner's async port."""

    def __init__(self, exporter: TraceExporter) -> None:
        self.exporter = exporter

    async def export(self, events: Sequence[TraceEvent]) -> None:
        self.exporter.export(events)
