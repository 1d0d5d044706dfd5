"""Ports for case-book bookkeeping tests, without a platform: a planner that does what each
report's description says, a policy that holds the one write tool for approval (in a real
ApprovalStore), and a tracer that keeps what it is sent."""

from __future__ import annotations

import asyncio
from typing import Any

from opsagent.agents.case import Case, ExceptionReport
from opsagent.agents.planner import PlannerTurn
from opsagent.agents.step_schema import FINISH, PlannedStep
from opsagent.policy.approvals import ApprovalRequest, ApprovalStore
from opsagent.policy.records import Permit, PolicyDecision, ToolCallRequest, args_digest
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolSpec

HELD_TOOL = "adjust"


def held_registry() -> ToolRegistry:
    """One write tool without a dry run (so the runner asks no executor for a preview)."""
    spec = ToolSpec(name=HELD_TOOL, system="sys", method="POST", path="/adjust", description="adjust",
                    parameters={"type": "object"}, path_params=[], body_params=[], writes=True,
                    reversible=False, inverse=None, supports_dry_run=False)
    return ToolRegistry([spec], {"sys": "http://127.0.0.1:9"})


def report(word: str, n: int, exception_type: str = "weight_mismatch") -> ExceptionReport:
    """A report whose description starts with what the planner is to do: `resolve`, `escalate`,
    `hold` (propose the held tool, then escalate once told it was not approved) or `wait` (plan
    only once `DescribedPlanner.go` is set, then resolve)."""
    return ExceptionReport(exception_type=exception_type, description=f"{word} #{n}",
                           entities={"shipment_id": f"SHP-{n}"})


class DescribedPlanner:
    """Follows the first word of each case's description. Per description, `instead` gives
    another word and `args` the held tool's arguments: a restarted planner that decides
    otherwise."""

    def __init__(self, args: dict[str, dict[str, Any]] | None = None,
                 instead: dict[str, str] | None = None) -> None:
        self.go = asyncio.Event()
        self.calls = 0
        self.args, self.instead = args or {}, instead or {}

    async def plan(self, case: Case, allowed_tools: list[str]) -> PlannerTurn:
        self.calls += 1
        description = case.report.description
        word = self.instead.get(description, description.split()[0])
        if word == "wait":
            await self.go.wait()
            word = "resolve"
        if word == "hold" and not case.steps:
            args = self.args.get(description, {"billed_weight_kg": 1.0})
            return PlannerTurn(step=PlannedStep(tool=HELD_TOOL, args=args))
        status = "resolved" if word == "resolve" else "escalated"
        return PlannerTurn(step=PlannedStep(tool=FINISH, status=status, reason=f"{word} as told"))


class HoldingPolicy:
    """Holds every call of the held tool for approval; approvals live in `store`. With
    `hang_after_request`, a request is stored and then never answered (`reached` is set): the
    case manager dies before it can record it. `withdraw_fails`: the policy is out of reach."""

    def __init__(self, store: ApprovalStore | None = None, *, hang_after_request: bool = False,
                 withdraw_fails: bool = False) -> None:
        self.store = store or ApprovalStore(":memory:")
        self.hang_after_request, self.withdraw_fails = hang_after_request, withdraw_fails
        self.reached = asyncio.Event()

    async def allowed_tools(self, exception_type: str) -> list[str]:
        return [HELD_TOOL]

    async def authorize(self, request: ToolCallRequest) -> PolicyDecision:
        return PolicyDecision(verdict="require_approval", risk="high", reasons=["irreversible"],
                              checks=["risk"], policy_version="test",
                              args_digest=args_digest(request.tool, request.args))

    async def request_approval(self, request: ToolCallRequest, decision: PolicyDecision,
                               preview: Any) -> ApprovalRequest:
        stored = self.store.request(
            case_id=request.case_id, exception_type=request.exception_type, step=request.step,
            tool=request.tool, args=request.args, args_digest=decision.args_digest,
            risk=decision.risk, reasons=decision.reasons, policy_version=decision.policy_version,
            preview=preview)
        if self.hang_after_request:
            self.reached.set()
            await asyncio.Event().wait()
        return stored

    async def get_approval(self, approval_id: str) -> ApprovalRequest:
        return self.store.get(approval_id)

    async def withdraw_approvals(self, case_id: str, reason: str) -> list[ApprovalRequest]:
        if self.withdraw_fails:
            raise ConnectionError("policy actor unreachable")
        return self.store.withdraw(case_id, reason)

    async def settle(self, permit: Permit, *, executed: bool) -> str:
        raise AssertionError("HoldingPolicy never allows a call, so nothing is settled")


class DenyingPolicy:
    """Allows the one tool `probe` to be proposed and denies every call of it."""

    async def allowed_tools(self, exception_type: str) -> list[str]:
        return ["probe"]

    async def authorize(self, request: ToolCallRequest) -> PolicyDecision:
        return PolicyDecision(verdict="deny", risk=None, reasons=["not in this test"], checks=[],
                              policy_version="test", args_digest="0" * 64)

    async def withdraw_approvals(self, case_id: str, reason: str) -> list[ApprovalRequest]:
        return []


class ListTracer:
    def __init__(self) -> None:
        self.events: list[Any] = []

    async def export(self, events: Any) -> None:
        self.events.extend(events)
