"""The case runner's ports: what it needs of each component, stated once, where it is consumed.

One typed protocol per component. Each runtime has one adapter per port: in-process
(`agents/local.py`, or the plain `Planner` and `Executor` themselves) and Ray (`cluster/adapters.py`,
`cluster/actor_calls.ActorPort` over `cluster/actors.py`). A test that each implementation has
exactly these methods with these parameters: `tests/agents/test_ports.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from opsagent.agents.case import Case
from opsagent.agents.planner import PlannerTurn
from opsagent.agents.tracing.records import TraceEvent
from opsagent.policy.approvals import ApprovalRequest
from opsagent.policy.records import Permit, PolicyDecision, ToolCallRequest
from opsagent.tools.spec import ToolResult


class PlannerPort(Protocol):
    """Proposes the next step of a case from the tools its class may use."""

    async def plan(self, case: Case, allowed_tools: list[str]) -> PlannerTurn: ...


class PolicyPort(Protocol):
    """Disposes of every proposed call; `authorize` reserves against the limits and issues the
    permit an allowed call runs under (`settle` commits or releases the reservation)."""

    async def allowed_tools(self, exception_type: str) -> list[str]: ...
    async def authorize(self, request: ToolCallRequest) -> PolicyDecision: ...
    async def request_approval(self, request: ToolCallRequest, decision: PolicyDecision,
                               preview: Any) -> ApprovalRequest: ...
    async def get_approval(self, approval_id: str) -> ApprovalRequest: ...
    async def withdraw_approvals(self, case_id: str, reason: str) -> list[ApprovalRequest]: ...
    async def settle(self, permit: Permit, *, executed: bool) -> str: ...


class ExecutorPort(Protocol):
    """Calls a tool on its system of record (a write only with a valid permit)."""

    async def execute(
        self, tool: str, args: dict[str, Any], *, case_id: str, step: int,
        permit: Permit | None = None, dry_run: bool = False,
    ) -> ToolResult: ...


class TracePort(Protocol):
    """The trace sink: acknowledges events once they are durable."""

    async def export(self, events: Sequence[TraceEvent]) -> None: ...


class CaseStorePort(Protocol):
    """Where the runner keeps a case: `checkpoint` after every status change and every step's
    outcome (so a case can be recovered at its last completed step, `CaseRunner.recover`);
    `cancel_reason` says whether someone cancelled it (checked before each planning turn)."""

    async def checkpoint(self, case: Case) -> None: ...
    def cancel_reason(self, case_id: str) -> str | None: ...
