"""The OTLP exporter: the trace records as OpenTelemetry spans, sent with the official OTLP/HTTP
exporter beside the Parquet store (an exporter like any other, `TraceExporter`).

One case is one trace: a `case` span (receipt to final status), a `step` span per planner step,
and under each step its `plan` (the planner call), `policy.decide` (the verdict), `tool.call` (the
call sent, or its dry run) and `approval` spans. The ids are the Parquet trace's:

- trace id: the first 32 hex digits of sha256(case_id) (`trace_id_of`); every span carries
  `opsagent.case_id`;
- a plan or approval span's id: the first 16 hex digits of its record's `event_id`; an action's
  `policy.decide` span the first 16, its `tool.call` span the last 16; each span carries the record's
  `opsagent.event_id`;
- case and step spans: sha256 of `case_id` (resp. `case_id:step`), first 16 hex digits.

Records are turned into spans as they arrive; a step span is sent when its case ends (it spans
its children), so spans of a case still waiting for approval are out, its case span is not yet.
Endpoint and headers: the config's `endpoint`, else the standard `OTEL_EXPORTER_OTLP_TRACES_*` /
`OTEL_EXPORTER_OTLP_*` variables (headers only from there: `key=value,key2=value2`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from opsagent.agents.tracing.exporters import TraceExporter
from opsagent.agents.tracing.records import (
    ActionEvent, ApprovalEvent, CaseEvent, PlannerCallEvent, TraceEvent,
)
from opsagent.errors import TraceError

FINAL = frozenset({"resolved", "escalated", "failed", "proposed"})
MAX_OPEN_CASES = 100_000  # cases whose step spans wait for the case's end, at most


class OtlpConfig(BaseModel):
    """Where the spans go (SystemConfig.otlp)."""

    model_config = {"extra": "forbid"}
    endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces; None: "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces. Headers "
        "(auth) come from OTEL_EXPORTER_OTLP_TRACES_HEADERS / OTEL_EXPORTER_OTLP_HEADERS.")
    service_name: str = Field(default="opsagent", description="The `service.name` resource attribute.")
    timeout_s: float = Field(default=10.0, gt=0, description="Seconds one export request may take.")
    max_queue: int = Field(default=8192, ge=1, description="Spans queued for export before new ones are dropped.")


def _hex_id(text: str, digits: int) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:digits], 16)


def trace_id_of(case_id: str) -> str:
    """The OTLP trace id (32 hex digits) of a case."""
    return f"{_hex_id(case_id, 32):032x}"


def _event_half(event_id: str, second: bool = False) -> int:
    try:
        value = int(event_id[16:32] if second else event_id[:16], 16)
    except ValueError:
        value = 0
    return value or _hex_id(event_id + ("/2" if second else ""), 16)


def _ns(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000_000)


class _NextIds:
    """An id generator that hands out the ids the exporter chose for the span it starts next."""

    def __init__(self) -> None:
        self._local = threading.local()

    def set(self, trace_id: int, span_id: int) -> None:
        self._local.ids = (trace_id, span_id)

    def generate_trace_id(self) -> int:
        return self._local.ids[0]

    def generate_span_id(self) -> int:
        return self._local.ids[1]

    def is_trace_id_random(self) -> bool:
        return False  # derived from the case id


class _Step:
    __slots__ = ("end", "start")

    def __init__(self, start: datetime, end: datetime) -> None:
        self.start, self.end = start, end


class OtlpExporter(TraceExporter):
    """Trace records as OTLP spans, batched and sent in the background by the OpenTelemetry SDK.

    `span_exporter`: where the SDK sends them (default: the OTLP/HTTP exporter on `config`)."""

    def __init__(self, config: OtlpConfig | None = None, *, span_exporter: Any = None) -> None:
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.config = config or OtlpConfig()
        self._api, self._root = trace, Context()
        self._ids = _NextIds()
        self._provider = TracerProvider(resource=Resource.create({"service.name": self.config.service_name}),
                                        id_generator=self._ids)  # type: ignore[arg-type]
        exporter = span_exporter or OTLPSpanExporter(endpoint=self.config.endpoint,
                                                     timeout=self.config.timeout_s)
        self._provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=self.config.max_queue))
        self._tracer = self._provider.get_tracer("opsagent.agents.tracing")
        self._steps: dict[str, dict[int, _Step]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def export(self, events: Sequence[TraceEvent]) -> None:
        with self._lock:
            if self._closed:
                raise TraceError("OtlpExporter: export after close")
            for event in events:
                if isinstance(event, PlannerCallEvent):
                    self._plan(event)
                elif isinstance(event, ActionEvent):
                    self._action(event)
                elif isinstance(event, ApprovalEvent):
                    self._approval(event)
                elif isinstance(event, CaseEvent) and event.status in FINAL:
                    self._case(event)

    def flush(self) -> None:
        """Send every span started so far (waits up to the export timeout)."""
        self._provider.force_flush(int(self.config.timeout_s * 1000))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._provider.shutdown()

    # -- one record, its spans ------------------------------------------------------------------

    def _plan(self, e: PlannerCallEvent) -> None:
        self._child(e.case_id, e.step, "plan", _event_half(e.event_id), e.started_at, e.finished_at, {
            "opsagent.event_id": e.event_id, "opsagent.model": e.model,
            "opsagent.decided_by": e.decided_by or "", "opsagent.prompt_tokens": e.prompt_tokens,
            "opsagent.completion_tokens": e.completion_tokens,
            "opsagent.finish_reason": e.finish_reason or "",
            **({"opsagent.confidence": e.confidence} if e.confidence is not None else {})})

    def _action(self, e: ActionEvent) -> None:
        common = {"opsagent.event_id": e.event_id, "opsagent.tool": e.tool, "opsagent.args_digest": e.args_digest}
        self._child(e.case_id, e.step, "policy.decide", _event_half(e.event_id), e.started_at, e.started_at, {
            **common, "opsagent.verdict": e.decision, "opsagent.risk": e.risk or "",
            "opsagent.reason": e.reasons[0] if e.reasons else "", "opsagent.policy_version": e.policy_version,
            "opsagent.autonomy_mode": e.autonomy_mode or ""})
        if e.executed or e.dry_run:
            self._child(e.case_id, e.step, "tool.call", _event_half(e.event_id, second=True),
                        e.started_at, e.finished_at or e.started_at,
                        {**common, "opsagent.executed": e.executed, "opsagent.dry_run": e.dry_run,
                         **({"opsagent.error": e.error} if e.error else {})}, error=e.error)

    def _approval(self, e: ApprovalEvent) -> None:
        self._child(e.case_id, e.step, "approval", _event_half(e.event_id), e.requested_at,
                    e.decided_at or e.recorded_at, {
                        "opsagent.event_id": e.event_id, "opsagent.approval_id": e.approval_id,
                        "opsagent.tool": e.tool, "opsagent.approval_status": e.status,
                        "opsagent.approver": e.approver or ""})

    def _case(self, e: CaseEvent) -> None:
        trace_id = _hex_id(e.case_id, 32)
        case_span = _hex_id(e.case_id, 16)
        end = e.finished_at or e.recorded_at
        for step, times in sorted(self._steps.pop(e.case_id, {}).items()):
            self._span("step", trace_id, _hex_id(f"{e.case_id}:{step}", 16), case_span, times.start,
                       times.end, {"opsagent.case_id": e.case_id, "opsagent.step": step})
        self._span("case", trace_id, case_span, None, e.received_at, end, {
            "opsagent.case_id": e.case_id, "opsagent.event_id": e.event_id,
            "opsagent.exception_type": e.exception_type, "opsagent.status": e.status,
            "opsagent.reason": e.reason or ""}, error=e.reason if e.status == "failed" else None)

    def _child(self, case_id: str, step: int, name: str, span_id: int, start: datetime, end: datetime,
               attributes: dict[str, Any], error: str | None = None) -> None:
        if case_id not in self._steps and len(self._steps) >= MAX_OPEN_CASES:
            del self._steps[next(iter(self._steps))]  # the oldest open case's step spans are lost
        times = self._steps.setdefault(case_id, {}).get(step)
        if times is None:
            self._steps[case_id][step] = _Step(start, max(start, end))
        else:
            times.start, times.end = min(times.start, start), max(times.end, end)
        self._span(name, _hex_id(case_id, 32), span_id, _hex_id(f"{case_id}:{step}", 16), start, end,
                   {"opsagent.case_id": case_id, "opsagent.step": step, **attributes}, error=error)

    def _span(self, name: str, trace_id: int, span_id: int, parent_id: int | None, start: datetime,
              end: datetime, attributes: dict[str, Any], error: str | None = None) -> None:
        api = self._api
        context = self._root  # a case span has no parent, whatever span is current here
        if parent_id is not None:
            parent = api.SpanContext(trace_id, parent_id, is_remote=False,
                                     trace_flags=api.TraceFlags(api.TraceFlags.SAMPLED))
            context = api.set_span_in_context(api.NonRecordingSpan(parent))
        self._ids.set(trace_id, span_id)
        span = self._tracer.start_span(name, context=context, start_time=_ns(start), attributes=attributes)
        if error:
            span.set_status(api.Status(api.StatusCode.ERROR, error[:200]))
        span.end(end_time=max(_ns(end), _ns(start)))
