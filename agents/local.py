"""In-process ports for the case runner: run a case without Ray (tests, recording examples)."""

from __future__ import annotations

from collections.abc import Sequence

from opsagent.agents.tracing.exporters import TraceExporter
from opsagent.agents.tracing.records import TraceEvent
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.records import PolicyDecision, ToolCallRequest


class LocalPolicy:
    """The policy engine called in-process, behind the runner's async port."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine

    async def allowed_tools(self, exception_type: str) -> list[str]:
        return self.engine.allowed_tools(exception_type)

    async def decide(self, request: ToolCallRequest) -> PolicyDecision:
        return self.engine.decide(request)


class LocalTracer:
    """Any trace exporter behind the runner's async port."""

    def __init__(self, exporter: TraceExporter) -> None:
        self.exporter = exporter

    async def export(self, events: Sequence[TraceEvent]) -> None:
        self.exporter.export(events)
