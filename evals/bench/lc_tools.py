"""The registry's tools as LangChain tools, for the LangGraph peer: each calls the system of record
through `tools.http.call_tool`, as opsagent's executor does, and records what it did.

Failures (HTTP errors, unreachable systems, arguments the system refuses) come back to the agent
as a `failed: ...` text, the way a LangChain tool reports an error to a ReAct agent; nothing is
raised. `finish` ends the agent's run (return_direct) with an outcome, as opsagent's planner does.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

import httpx
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from opsagent.errors import ToolError
from opsagent.evals.scoring import ActionRecord, AgentRun
from opsagent.tools.http import call_tool
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolSpec

FINISH = "finish"


class PeerCall(BaseModel):
    """One tool call the peer made."""

    tool: str
    args: dict[str, Any]
    ok: bool
    writes: bool
    error: str | None = None
    result: Any = Field(None, description="The body the system returned (None when the call failed).")
    started_at: datetime
    finished_at: datetime
    duration_ms: float


class FinishArgs(BaseModel):
    status: Literal["resolved", "escalated"] = Field(description="resolved, or escalated (a human takes over)")
    reason: str = Field(description="why, in one sentence")


class Toolbox:
    """One case's LangChain tools over `registry`, and the record of their calls."""

    def __init__(self, registry: ToolRegistry, names: list[str], *, key: str, timeout: float = 10.0) -> None:
        self.registry = registry
        self.specs = [registry.get(n) for n in names]  # ToolError for an unknown name
        self.key = key
        self.timeout = timeout
        self.calls: list[PeerCall] = []
        self.outcome: str | None = None
        self.reason: str | None = None

    def tools(self) -> list[BaseTool]:
        """One tool per spec, then `finish`."""
        return [*(self._tool(s) for s in self.specs), StructuredTool.from_function(
            coroutine=self.finish, name=FINISH, args_schema=FinishArgs, return_direct=True,
            description='End the case: status "resolved" once it is fixed, or "escalated" so that a human takes over.')]

    def run(self, instance_id: str) -> AgentRun:
        """The calls as the scorer takes them."""
        return AgentRun(instance_id=instance_id, outcome=self.outcome, actions=[
            ActionRecord(tool=c.tool, args=c.args, executed=True, ok=c.ok) for c in self.calls])

    @property
    def last_write_at(self) -> datetime | None:
        ends = [c.finished_at for c in self.calls if c.writes and c.ok]
        return max(ends) if ends else None

    def _tool(self, spec: ToolSpec) -> BaseTool:
        async def call(**args: Any) -> str:
            return await self.call(spec.name, args)

        first = (spec.description or spec.name).strip().splitlines()[0][:300]
        return StructuredTool.from_function(coroutine=call, name=spec.name, description=first,
                                            args_schema=args_schema(spec.parameters))

    async def call(self, tool: str, args: dict[str, Any]) -> str:
        """Call one tool and return what the agent is shown (the body, or `failed: ...`)."""
        spec = self.registry.get(tool)
        args = {k: v for k, v in args.items() if v is not None}
        key = f"{self.key}:{len(self.calls) + 1}" if spec.writes else None
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            try:
                result = await call_tool(client, spec, self.registry.base_url(spec.system), args,
                                         idempotency_key=key, timeout=self.timeout)
            except ToolError as exc:  # a bad argument shape: the agent is told, like any failure
                now = datetime.now().astimezone()
                self.calls.append(PeerCall(tool=tool, args=args, ok=False, writes=spec.writes, error=str(exc),
                                           started_at=now, finished_at=now, duration_ms=0.0))
                return f"failed: {exc}"
        self.calls.append(PeerCall(tool=tool, args=args, ok=result.ok, writes=spec.writes, error=result.error,
                                   started_at=result.started_at, finished_at=result.finished_at,
                                   duration_ms=result.duration_ms, result=result.body if result.ok else None))
        if not result.ok:
            return f"failed: {result.error}"
        return json.dumps(result.body, separators=(",", ":"), default=str)

    async def finish(self, status: str, reason: str) -> str:
        """End the case with an outcome (what the scorer reads as the agent's conclusion)."""
        self.outcome, self.reason = status, reason
        return f"case {status}: {reason}"


_KEEP = {"type", "enum", "const", "properties", "required", "items", "description", "minimum", "maximum",
         "minLength", "maxLength"}


def args_schema(params: dict[str, Any]) -> dict[str, Any]:
    """The tool's argument schema, reduced to what chat tool calling takes."""
    props = {name: {k: v for k, v in p.items() if k in _KEEP} for name, p in (params.get("properties") or {}).items()}
    return {"type": "object", "properties": props, "required": list(params.get("required") or [])}
