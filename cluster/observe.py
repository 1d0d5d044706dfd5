"""Where the actors record their metrics (cluster/metrics.py): plain functions over the records they
already hold, so the recording rules are tested without Ray."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from opsagent.agents.runner import TracePort
from opsagent.agents.tracing.records import CaseEvent, TraceEvent

FINAL = frozenset({"resolved", "escalated", "failed", "proposed"})


class Recorder(Protocol):
    """What `cluster.metrics.Metrics` offers (a fake in tests)."""

    def inc(self, name: str, value: float = 1.0, **tags: Any) -> None: ...
    def set(self, name: str, value: float, **tags: Any) -> None: ...
    def observe(self, name: str, value: float, **tags: Any) -> None: ...


def record_decision(metrics: Recorder, exception_type: str, tool: str, decision: Any,
                    unsupervised: bool) -> None:
    """One policy verdict; a denial by the check that decided it (the last that ran; none ran
    when an approval was for other arguments)."""
    metrics.inc("opsagent_policy_decisions_total", exception_type=exception_type, tool=tool,
                verdict=decision.verdict)
    if decision.verdict == "deny":
        check = decision.checks[-1] if decision.checks else "approval_mismatch"
        metrics.inc("opsagent_policy_denials_total", exception_type=exception_type, check=check)


def is_unsupervised_high_risk(decision: Any, approved: bool) -> bool:
    """A high-risk call let through without a human approval of exactly it."""
    return decision.verdict == "allow" and decision.risk == "high" and not approved


def record_turn(metrics: Recorder, model: str, turn: Any) -> None:
    """One planner turn: calls by who decided, tokens and latency of a model call, unusable output."""
    g = turn.generation
    decided_by = turn.decided_by or ("model" if g is not None else "rule")
    metrics.inc("opsagent_planner_calls_total", model=model, decided_by=decided_by)
    if g is not None:
        metrics.inc("opsagent_planner_tokens_total", g.prompt_tokens, model=model, kind="prompt")
        metrics.inc("opsagent_planner_tokens_total", g.completion_tokens, model=model, kind="completion")
        metrics.observe("opsagent_planner_latency_seconds", g.duration_ms / 1000, model=model)
    if turn.step is None:
        metrics.inc("opsagent_planner_errors_total", model=model)


def record_tool_call(metrics: Recorder, system: str, tool: str, result: Any) -> None:
    metrics.inc("opsagent_executor_calls_total", system=system, tool=tool,
                dry_run=str(bool(result.dry_run)).lower())
    if not result.ok:
        metrics.inc("opsagent_executor_errors_total", system=system, tool=tool)
    metrics.observe("opsagent_executor_latency_seconds", result.duration_ms / 1000, system=system)


def record_approvals(metrics: Recorder, pending: Sequence[Any], now: datetime) -> None:
    """The pending approvals now: how many, and the age of the oldest."""
    metrics.set("opsagent_approvals_pending", len(pending))
    oldest = min((a.requested_at for a in pending), default=None)
    metrics.set("opsagent_approval_oldest_pending_age_seconds",
                0.0 if oldest is None else max(0.0, (now - oldest).total_seconds()))


class CaseMetrics:
    """Counts cases from the status changes the runner traces: opened, final (with their time from
    receipt), and the open ones by status. A case whose final status is traced twice (a retried
    export) is counted once."""

    def __init__(self, metrics: Recorder) -> None:
        self.metrics = metrics
        self._open: dict[str, tuple[str, str]] = {}  # case id -> (class, status)
        self._shown: set[tuple[str, str]] = set()  # (class, status) gauges ever set
        self._finished: dict[str, None] = {}  # recently finished ids (bounded), for duplicates

    def observe(self, events: Sequence[TraceEvent]) -> None:
        changed = False
        for event in events:
            if isinstance(event, CaseEvent):
                changed |= self._status(event)
        if changed:
            self._gauges()

    def _status(self, e: CaseEvent) -> bool:
        cls = e.exception_type
        if e.status in FINAL:
            if e.case_id in self._finished:
                return False
            self._finished[e.case_id] = None
            if len(self._finished) > 10_000:
                del self._finished[next(iter(self._finished))]
            self._open.pop(e.case_id, None)
            self.metrics.inc("opsagent_cases_total", exception_type=cls, status=e.status)
            if e.finished_at is not None:
                self.metrics.observe("opsagent_case_duration_seconds",
                                     (e.finished_at - e.received_at).total_seconds(),
                                     exception_type=cls, status=e.status)
            return True
        if e.status == "received" and e.case_id not in self._open:
            self.metrics.inc("opsagent_cases_received_total", exception_type=cls)
        self._open[e.case_id] = (cls, e.status)
        return True

    def _gauges(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for key in self._open.values():
            counts[key] = counts.get(key, 0) + 1
        for key in self._shown | set(counts):
            self.metrics.set("opsagent_cases_open", counts.get(key, 0), exception_type=key[0], status=key[1])
        self._shown |= set(counts)


class MeteredTracer:
    """A trace port that records case metrics from what it exports."""

    def __init__(self, tracer: TracePort, cases: CaseMetrics) -> None:
        self.tracer, self.cases = tracer, cases

    def __getattr__(self, name: str) -> Any:  # the wrapped handle's extras (`tally`, `handle`)
        return getattr(self.tracer, name)

    async def export(self, events: Sequence[TraceEvent]) -> None:
        await self.tracer.export(events)
        self.cases.observe(events)
