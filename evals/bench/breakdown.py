"""Where a case's time went, from its trace rows and the engine's per-call timings.

A case's latency runs from receipt to its last system-of-record update (its last executed,
successful, non-dry-run write), or to its final status if it wrote nothing: the definition the
demo and the eval runner use. Within that window:

- planner prefill: call start to first output token (includes waiting in vLLM's queue and batch);
- planner decode: first token to the end of the call; calls without a first-token time (engines
  that do not stream it) count whole as `planner_unsplit`;
- policy: an action's proposal to the `executing` status that follows the policy's allow (the
  decision and its actor round trip); for an action not executed, proposal to its end;
- executor/tool: `executing` to the tool call's end (the executor actor hop and the HTTP call),
  less one trace write (the `executing` event is exported in between);
- trace writes: exports the runner awaited inside the window times the measured latency of one
  acknowledged export (an estimate: the trace store does not time its own exports);
- queueing + Ray overhead: whatever is left (actor hops, prompt and schema building, the case
  manager's event loop, waiting for a free slot).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class CaseRow(BaseModel):
    case_id: str
    exception_type: str
    status: str
    received_at: datetime
    finished_at: datetime | None = None


class StatusRow(BaseModel):
    case_id: str
    status: str
    recorded_at: datetime


class CallRow(BaseModel):
    case_id: str
    step: int
    started_at: datetime
    finished_at: datetime
    prompt_tokens: int
    completion_tokens: int
    first_token_at: datetime | None = None
    queued_ms: float | None = None
    cached_prompt_tokens: int | None = None


class ActionRow(BaseModel):
    case_id: str
    step: int
    tool: str
    decision: str
    executed: bool
    writes: bool
    dry_run: bool = False
    error: str | None = None
    started_at: datetime
    finished_at: datetime | None = None


class CaseTrace(BaseModel):
    """Everything the breakdown needs about one case."""

    case: CaseRow
    statuses: list[StatusRow] = Field(default_factory=list)
    calls: list[CallRow] = Field(default_factory=list)
    actions: list[ActionRow] = Field(default_factory=list)
    approvals: int = Field(0, description="Approval rows of the case (each one export).")


class CaseBreakdown(BaseModel):
    """One case's latency and its parts, in milliseconds."""

    case_id: str
    exception_type: str
    status: str
    latency_ms: float
    planner_calls: int
    prompt_tokens: int
    cached_prompt_tokens: int | None
    completion_tokens: int
    prefill_ms: float
    decode_ms: float
    unsplit_ms: float
    engine_queue_ms: float | None = Field(description="Part of prefill spent queued in vLLM, if reported.")
    policy_ms: float
    tool_ms: float
    trace_ms: float
    trace_exports: int
    other_ms: float = Field(description="Queueing + Ray overhead: what no other part accounts for.")

    @property
    def planner_ms(self) -> float:
        return self.prefill_ms + self.decode_ms + self.unsplit_ms


PARTS = ("prefill_ms", "decode_ms", "unsplit_ms", "policy_ms", "tool_ms", "trace_ms", "other_ms")


def case_end(trace: CaseTrace) -> datetime | None:
    """The last successful executed write's end, else the case's final status time."""
    writes = [a.finished_at for a in trace.actions
              if a.executed and a.writes and not a.dry_run and a.error is None and a.finished_at]
    return max(writes) if writes else trace.case.finished_at


def _ms(start: datetime, end: datetime) -> float:
    return (end - start).total_seconds() * 1000


def breakdown(trace: CaseTrace, export_ms: float) -> CaseBreakdown | None:
    """The parts of one case's latency (None if the case has no end yet); `export_ms` is the
    latency of one acknowledged trace export."""
    start, end = trace.case.received_at, case_end(trace)
    if end is None:
        return None
    calls = [c for c in trace.calls if c.finished_at <= end]
    prefill = decode = unsplit = 0.0
    queued: float | None = None
    for c in calls:
        if c.first_token_at is None:
            unsplit += _ms(c.started_at, c.finished_at)
        else:
            prefill += _ms(c.started_at, c.first_token_at)
            decode += _ms(c.first_token_at, c.finished_at)
        if c.queued_ms is not None:
            queued = (queued or 0.0) + c.queued_ms
    executing = sorted(s.recorded_at for s in trace.statuses if s.status == "executing")
    policy = tool = 0.0
    for a in trace.actions:
        if a.finished_at is None or a.started_at > end:
            continue
        stop = min(a.finished_at, end)
        went = next((t for t in executing if a.started_at <= t <= stop), None)
        if a.executed and went is not None:
            policy += _ms(a.started_at, went)
            tool += max(_ms(went, stop) - export_ms, 0.0)
        else:
            policy += _ms(a.started_at, stop)
    exports = (sum(s.recorded_at <= end for s in trace.statuses) + len(calls)
               + sum(a.finished_at is not None and a.finished_at < end for a in trace.actions)
               + trace.approvals)
    trace_ms = exports * export_ms
    latency = _ms(start, end)
    cached = [c.cached_prompt_tokens for c in calls if c.cached_prompt_tokens is not None]
    other = latency - (prefill + decode + unsplit + policy + tool + trace_ms)
    return CaseBreakdown(
        case_id=trace.case.case_id, exception_type=trace.case.exception_type, status=trace.case.status,
        latency_ms=latency, planner_calls=len(calls), prompt_tokens=sum(c.prompt_tokens for c in calls),
        cached_prompt_tokens=sum(cached) if cached else None,
        completion_tokens=sum(c.completion_tokens for c in calls), prefill_ms=prefill, decode_ms=decode,
        unsplit_ms=unsplit, engine_queue_ms=queued, policy_ms=policy, tool_ms=tool, trace_ms=trace_ms,
        trace_exports=exports, other_ms=other,
    )


def mean_parts(rows: list[CaseBreakdown]) -> dict[str, float]:
    """Mean of each part (and of the latency) over cases; empty for no cases."""
    if not rows:
        return {}
    keys = ("latency_ms", *PARTS)
    return {k: sum(getattr(r, k) for r in rows) / len(rows) for k in keys}
