"""The case state machine: plan a step, let the policy dispose, execute, observe, repeat.

The runner only talks to ports (`agents/ports.py`), so the same code runs with plain objects in
a unit test and with Ray actor handles in the cluster. A cancelled case (`CaseStorePort.
cancel_reason`) ends `escalated` at the next step boundary, before its planner is asked again. Whatever goes wrong, a case ends in a
definite status: `resolved`, `escalated`, `failed`, `proposed`, or paused as `awaiting_approval`.

Shadow mode: the policy answers a write with `propose`. The runner takes the system's dry run as
the observation (the planner sees what the write would have returned and goes on), executes
nothing, and a case that proposed anything ends `proposed` with the outcome the agent would have
reached (`Case.outcome`): never `resolved`, since nothing was written.

The state database away (StateUnavailable, from a checkpoint, the policy or an executor recording
its permit): the case waits, it is not failed. Each call that met the outage is sent again after a
pause (0.5 s, doubling to 10 s) until the database answers: a checkpoint writes the whole case,
settling and approval requests are keyed, and an allowed step whose executor could not record its
permit (so sent nothing) is authorized again (a fresh permit, the same reservation) and run with
the same idempotency key. A case that waits longer than `state_wait_s` is parked: left open at its
last checkpoint, never failed for the outage, and its id put in `parked`; whoever runs the cases
(the case book) resumes it with `recover` once the database answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from opsagent.agents.case import Case, CaseStatus, Step
from opsagent.agents.planner import PlannerTurn
from opsagent.agents.ports import CaseStorePort, ExecutorPort, PlannerPort, PolicyPort, TracePort
from opsagent.agents.step_schema import FINISH
from opsagent.agents.tracing.records import ActionEvent, ApprovalEvent, CaseEvent, PlannerCallEvent
from opsagent.errors import StateUnavailable
from opsagent.policy.approvals import ApprovalRequest
from opsagent.policy.records import PolicyDecision, ToolCallRequest
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolResult

log = logging.getLogger(__name__)
STATE_WAIT_S = 3600.0  # how long a case waits for the state database before it is parked
STATE_PAUSE_S, STATE_PAUSE_MAX_S = 0.5, 10.0


class CaseRunner:
    """Drives one case at a time through planner, policy and executor; traces every move."""

    def __init__(
        self, planner: PlannerPort, policy: PolicyPort, executor: ExecutorPort, tracer: TracePort,
        registry: ToolRegistry, *, max_steps: int = 6, max_bad_outputs: int = 2,
        cases: CaseStorePort | None = None, state_wait_s: float = STATE_WAIT_S,
    ) -> None:
        """`cases`: where each case is checkpointed and asked whether it was cancelled (None: a
        case lives in memory only, and nobody cancels it). `state_wait_s`: how long a case waits
        for a state database that is away before it is parked."""
        self.planner, self.policy, self.executor, self.tracer = planner, policy, executor, tracer
        self.cases = cases
        self.registry = registry
        self.max_steps = max_steps
        self.max_bad_outputs = max_bad_outputs
        self.state_wait_s = state_wait_s
        self.parked: set[str] = set()  # cases parked for the outage; whoever resumes one removes it

    async def run(self, case: Case) -> Case:
        """Advance `case` until it is final or waits for approval. Never raises for a case fault."""
        try:
            await self._run(case)
        except StateUnavailable as exc:
            self._park(case, exc)
        except Exception as exc:  # a crashed port must not lose the case
            await self._fail(case, exc)
        return case

    async def resume(self, case: Case) -> Case:
        """Continue a case paused for approval once its approval was decided (no-op while pending).

        Approved: the held step goes through the policy again (under the current policy) and, if
        allowed, runs. Rejected or expired: the planner is told and decides what next.
        """
        try:
            held = case.steps[-1] if case.steps else None
            if case.status != CaseStatus.awaiting_approval or held is None or not held.approval_id:
                return case
            approval = await self._waiting(case, self.policy.get_approval, held.approval_id)
            if approval.status == "pending":
                return case
            await self.tracer.export([_approval_event(approval)])
            if approval.status == "approved":
                if await self._act(case, held) == "paused":
                    return case
            else:
                held.error = f"{approval.status} by {approval.approver or 'nobody'}: {approval.reason}"
            await self._run(case)
        except StateUnavailable as exc:
            self._park(case, exc)
        except Exception as exc:
            await self._fail(case, exc)
        return case

    async def recover(self, case: Case) -> Case:
        """Continue a case from its last checkpoint (after a crash of whoever ran it).

        Awaiting approval: as `resume` (held while pending). A write that was executing when the
        checkpoint was taken, with no result recorded, goes through the policy and runs again
        with the same step number, hence the same idempotency key: the system of record answers
        the original result instead of applying it twice; so does a step the policy never answered
        (a parked case). Otherwise the planner plans the next step from the recorded ones. A
        final case is left alone.
        """
        if case.status.final:
            return case
        if case.status == CaseStatus.awaiting_approval:
            return await self.resume(case)
        try:
            last = case.steps[-1] if case.steps else None
            unanswered = last is not None and not last.executed and (
                last.verdict in (None, "allow") or (last.verdict == "require_approval" and not last.approval_id))
            if unanswered:
                if await self._act(case, last) == "paused":
                    return case
            await self._run(case)
        except StateUnavailable as exc:
            self._park(case, exc)
        except Exception as exc:
            await self._fail(case, exc)
        return case

    async def _fail(self, case: Case, exc: Exception) -> None:
        """End the case `failed` for an internal error; if the state database is away too, so
        the failure cannot be stored, park it instead (resumed from its last checkpoint)."""
        try:
            await self._finish(case, CaseStatus.failed, f"internal error: {type(exc).__name__}: {exc}")
        except StateUnavailable as away:
            self._park(case, away)

    def _park(self, case: Case, exc: StateUnavailable) -> None:
        self.parked.add(case.case_id)
        log.error("case %s parked %s: the state database stayed away (%s); it resumes from its "
                  "last checkpoint once the database answers again", case.case_id, case.status.value, exc)

    async def _run(self, case: Case) -> None:
        if case.status == CaseStatus.received:
            await self._set_status(case, CaseStatus.received)
        allowed = await self.policy.allowed_tools(case.report.exception_type)
        if not allowed:
            await self._finish(case, CaseStatus.escalated,
                               f"no tools allowed for class {case.report.exception_type!r}")
            return
        bad_outputs = 0
        while len(case.steps) < self.max_steps:
            cancelled = self.cases.cancel_reason(case.case_id) if self.cases is not None else None
            if cancelled is not None:  # a human takes over: at a step boundary, the model not asked
                await self._finish(case, CaseStatus.escalated, cancelled)
                return
            await self._set_status(case, CaseStatus.planning)
            turn = await self.planner.plan(case, allowed)
            if turn.generation is not None:
                case.planner_calls += 1
                case.prompt_tokens += turn.generation.prompt_tokens
                case.completion_tokens += turn.generation.completion_tokens
            if turn.generation is not None or turn.candidates is not None:
                await self.tracer.export([_planner_event(case, turn)])
            if turn.step is None:
                bad_outputs += 1
                if bad_outputs >= self.max_bad_outputs:
                    await self._finish(case, CaseStatus.escalated, f"planner output unusable: {turn.error}")
                    return
                continue
            planned = turn.step
            if planned.tool == FINISH:
                status = CaseStatus.resolved if planned.status == "resolved" else CaseStatus.escalated
                await self._finish(case, status, planned.reason or planned.status or "finished")
                return
            step = Step(step=len(case.steps) + 1, tool=planned.tool, args=planned.args,
                        evidence=planned.evidence, confidence=turn.confidence)
            case.steps.append(step)
            if await self._act(case, step) == "paused":
                return
        await self._finish(case, CaseStatus.escalated, f"no resolution within {self.max_steps} steps")

    async def _act(self, case: Case, step: Step) -> str:
        """Ask the policy about one step and carry out what it allows."""
        started = datetime.now(UTC)
        request = ToolCallRequest(
            case_id=case.case_id, exception_type=case.report.exception_type, step=step.step,
            tool=step.tool, args=step.args, entities=case.report.entities,
            observations={s.tool: s.result for s in case.steps if s.executed and s.ok},
            proposed={s.tool: s.result for s in case.steps if s.verdict == "propose" and s.ok},
            confidence=step.confidence, submitted_by=case.submitted_by,
        )
        result: ToolResult | None = None
        outage = _Outage(case.case_id, self.state_wait_s)
        while True:  # again when the executor could not record the permit (it sent nothing)
            decision = await self._waiting(case, self.policy.authorize, request)
            case.policy_version = decision.policy_version
            step.verdict, step.risk, step.reasons = decision.verdict, decision.risk, decision.reasons
            if decision.verdict != "allow":
                break
            await self._set_status(case, CaseStatus.executing)
            if decision.permit is not None and decision.permit.expires_at <= time.time():
                continue  # it lapsed while the checkpoint waited for the database
            try:
                result = await self.executor.execute(
                    step.tool, step.args, case_id=case.case_id, step=step.step, permit=decision.permit)
                break
            except StateUnavailable as exc:
                await outage.pause(exc)
        outage.over()
        outcome = "continue"
        if decision.verdict == "allow" and result is not None:
            step.executed, step.ok, step.result, step.error = True, result.ok, result.body, result.error
            if decision.permit is not None:
                await self._waiting(case, self.policy.settle, decision.permit, executed=_may_have_run(result))
            if result.ok and self.registry.get(step.tool).writes:
                case.last_write_at = result.finished_at
        elif decision.verdict == "propose":  # shadow mode: dry run only, never executed
            result = await self._preview(case, step)
            step.ok = True if result is None else result.ok
            step.result = None if result is None else would_be_result(result.body)
        elif decision.verdict == "require_approval":
            result = await self._preview(case, step)
            approval = await self._waiting(case, self.policy.request_approval,
                                           request, decision, result.body if result is not None else None)
            step.approval_id = approval.approval_id
            superseded = [await self._waiting(case, self.policy.get_approval, a) for a in approval.supersedes]
            await self.tracer.export([_approval_event(a) for a in (*superseded, approval)])
            outcome = "paused"
        writes = step.tool in self.registry and self.registry.get(step.tool).writes
        await self.tracer.export([_action_event(case, step, decision, result, started, writes)])
        if outcome != "paused":
            await self._checkpoint(case)
        if outcome == "paused":
            await self._set_status(case, CaseStatus.awaiting_approval,
                                   f"{step.tool} needs approval ({step.approval_id})")
        return outcome

    async def _preview(self, case: Case, step: Step) -> ToolResult | None:
        """The system's own dry run of a held action: the diff an approver will see."""
        if not self.registry.get(step.tool).supports_dry_run:
            return None
        preview = await self.executor.execute(step.tool, step.args, case_id=case.case_id,
                                              step=step.step, dry_run=True)
        step.result, step.error = preview.body, preview.error
        return preview

    async def _set_status(self, case: Case, status: CaseStatus, reason: str | None = None) -> None:
        before = case.status, case.reason
        case.status = status
        if reason is not None:
            case.reason = reason
        try:
            await self._checkpoint(case)
        except StateUnavailable:  # parked: held as it was last stored
            case.status, case.reason = before
            raise
        await self.tracer.export([_case_event(case)])

    async def _checkpoint(self, case: Case) -> None:
        if self.cases is not None:
            await self._waiting(case, self.cases.checkpoint, case)

    async def _waiting(self, case: Case, call: Any, *args: Any, **kwargs: Any) -> Any:
        """`await call(*args, **kwargs)`, sent again while the state database is away (see the
        module's docstring: only calls whose repetition is harmless come here)."""
        outage = _Outage(case.case_id, self.state_wait_s)
        while True:
            try:
                answer = await call(*args, **kwargs)
            except StateUnavailable as exc:
                await outage.pause(exc)
                continue
            outage.over()
            return answer

    async def _finish(self, case: Case, status: CaseStatus, reason: str) -> None:
        """End the case; one that proposed writes (shadow mode) ends `proposed`, with the outcome
        it would have reached."""
        if status in (CaseStatus.resolved, CaseStatus.escalated) and any(
                s.verdict == "propose" for s in case.steps):
            case.outcome = status.value
            reason = f"shadow mode, nothing written; proposed {status.value}: {reason}"
            status = CaseStatus.proposed
        case.finished_at = datetime.now(UTC)
        await self.withdraw_approvals(case, status)  # before the final status is checkpointed
        try:
            await self._set_status(case, status, reason)
        except StateUnavailable:
            raise
        except Exception:  # the tracer itself is down: the status is still final
            case.status, case.reason = status, reason
            try:
                await self._checkpoint(case)
            except Exception:
                pass

    async def withdraw_approvals(self, case: Case, ending: CaseStatus | None = None) -> None:
        """The case ends (as `ending`, else its status): its still-pending approvals are withdrawn
        (nothing will run their actions) and traced. Never raises: with the policy out of reach
        they stay pending, and the API refuses to decide an approval its case does not wait for."""
        ending = ending or case.status
        try:
            withdrawn = await self._waiting(case, self.policy.withdraw_approvals,
                                            case.case_id, f"withdrawn: the case ended {ending.value}")
            if withdrawn:
                await self.tracer.export([_approval_event(a) for a in withdrawn])
        except Exception as exc:
            logging.getLogger(__name__).error("cannot withdraw the pending approvals of %s: %s",
                                              case.case_id, exc)


class _Outage:
    """One wait of a case for the state database: growing pauses, up to `bound_s` in all."""

    def __init__(self, case_id: str, bound_s: float) -> None:
        self.case_id, self.bound_s = case_id, bound_s
        self.since: float | None = None
        self.pause_s = STATE_PAUSE_S

    async def pause(self, exc: StateUnavailable) -> None:
        """Sleep before the next try; `exc` again once the wait would outlast the bound."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            log.warning("case %s waits for the state database: %s", self.case_id, exc)
        if now + self.pause_s > self.since + self.bound_s:
            raise exc
        await asyncio.sleep(self.pause_s)
        self.pause_s = min(self.pause_s * 2, STATE_PAUSE_MAX_S)

    def over(self) -> None:
        if self.since is not None:
            log.warning("case %s goes on: the state database answered after %.1f s", self.case_id,
                        time.monotonic() - self.since)
            self.since, self.pause_s = None, STATE_PAUSE_S


def _case_event(case: Case) -> CaseEvent:
    return CaseEvent(
        case_id=case.case_id, exception_type=case.report.exception_type, status=case.status.value,
        description=case.report.description, entities=case.report.entities, reason=case.reason,
        received_at=case.received_at, finished_at=case.finished_at, recorded_at=datetime.now(UTC),
        outcome=case.outcome if case.status == CaseStatus.proposed else None,
    )


def would_be_result(preview: Any) -> Any:
    """What a write would have returned, from its dry run's `{"dry_run", "diff": {before, after}}`:
    the record it would create (the one key of `after` that `before` has as null), else `after`."""
    diff = preview.get("diff") if isinstance(preview, dict) else None
    if not isinstance(diff, dict):
        return preview
    before, after = diff.get("before"), diff.get("after")
    if isinstance(before, dict) and isinstance(after, dict):
        created = [k for k, v in before.items() if v is None and isinstance(after.get(k), dict)]
        if len(created) == 1:
            return after[created[0]]
    return after


def _may_have_run(result: ToolResult) -> bool:
    """Only a 4xx answer proves the system applied nothing; anything else may have written."""
    return result.ok or result.status_code is None or result.status_code >= 500


def _approval_event(approval: ApprovalRequest) -> ApprovalEvent:
    return ApprovalEvent(
        approval_id=approval.approval_id, case_id=approval.case_id, step=approval.step,
        tool=approval.tool, args=approval.args, args_digest=approval.args_digest,
        status=approval.status.value, risk=approval.risk, preview=approval.preview,
        policy_version=approval.policy_version, requested_at=approval.requested_at,
        decided_at=approval.decided_at, approver=approval.approver, reason=approval.reason,
    )


def _planner_event(case: Case, turn: PlannerTurn) -> PlannerCallEvent:
    """The planner's turn as traced: a model call, or a step the playbook left no choice in."""
    g = turn.generation
    now = datetime.now(UTC)
    return PlannerCallEvent(
        case_id=case.case_id, step=len(case.steps) + 1, model=g.model if g else "rule",
        prompt_digest=turn.prompt_digest or "", prompt_tokens=g.prompt_tokens if g else 0,
        completion_tokens=g.completion_tokens if g else 0,
        output=g.text if g else (turn.step.model_dump_json() if turn.step else ""),
        finish_reason=g.finish_reason if g else "rule",
        started_at=g.started_at if g else now, finished_at=g.finished_at if g else now,
        duration_ms=g.duration_ms if g else 0.0,
        prompt=[m.model_dump() for m in turn.messages] if turn.messages is not None else None,
        confidence=turn.confidence, decided_by=turn.decided_by,
        candidates=None if turn.candidates is None else [c.model_dump() for c in turn.candidates],
        withheld=[w.model_dump() for w in turn.withheld] or None,
    )


def _action_event(
    case: Case, step: Step, decision: PolicyDecision, result: ToolResult | None, started: datetime,
    writes: bool,
) -> ActionEvent:
    return ActionEvent(
        case_id=case.case_id, step=step.step, tool=step.tool, args=step.args, risk=decision.risk,
        decision=decision.verdict, reasons=decision.reasons,
        limits=[u.model_dump() for u in decision.limits], writes=writes, executed=step.executed,
        dry_run=bool(result and result.dry_run), result=result.body if result else None,
        error=result.error if result else None, started_at=started,
        finished_at=result.finished_at if result else datetime.now(UTC),
        policy_version=decision.policy_version, args_digest=decision.args_digest,
        autonomy_mode=None if decision.mode is None else str(decision.mode),
    )
