"""Adapters that let the case runner talk to Ray actor handles as if they were plain objects."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from ray.exceptions import RayActorError

from opsagent.agents.case import Case
from opsagent.agents.planner import PlannerTurn
from opsagent.agents.tracing.records import TraceEvent
from opsagent.policy.approvals import ApprovalRequest
from opsagent.policy.records import Permit, PolicyDecision, ToolCallRequest
from opsagent.tools.spec import ToolResult


class PlannerHandle:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def plan(self, case: Case, allowed_tools: list[str]) -> PlannerTurn:
        return await self.handle.plan.remote(case, allowed_tools)


class PolicyHandle:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def allowed_tools(self, exception_type: str) -> list[str]:
        return await self.handle.allowed_tools.remote(exception_type)

    async def decide(self, request: ToolCallRequest) -> PolicyDecision:
        return await self.handle.decide.remote(request)

    async def request_approval(self, request: ToolCallRequest, decision: PolicyDecision,
                               preview: Any) -> ApprovalRequest:
        return await self.handle.request_approval.remote(request, decision, preview)

    async def get_approval(self, approval_id: str) -> ApprovalRequest:
        return await self.handle.get_approval.remote(approval_id)

    async def settle(self, permit: Permit, *, executed: bool) -> str:
        return await self.handle.settle.remote(permit, executed)


class ExecutorPool:
    """Round-robin over executor actors; a dead actor's call is retried once on the next.

    Retrying a write is safe: it carries the same idempotency key, so the system of record
    applies it at most once.
    """

    def __init__(self, handles: Sequence[Any]) -> None:
        if not handles:
            raise ValueError("an executor pool needs at least one actor")
        self.handles = list(handles)
        self._next = itertools.cycle(range(len(self.handles)))

    async def execute(self, tool: str, args: dict[str, Any], *, case_id: str, step: int,
                      permit: Permit | None = None, dry_run: bool = False) -> ToolResult:
        for attempt in range(2):
            handle = self.handles[next(self._next)]
            try:
                return await handle.execute.remote(tool, args, case_id, step, permit, dry_run)
            except RayActorError:
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")


class TraceHandle:
    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def export(self, events: Sequence[TraceEvent]) -> None:
        await self.handle.export.remote(list(events))
