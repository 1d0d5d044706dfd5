"""The executor: carries out one tool call against a system of record and returns what it saw."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx

from opsagent.errors import PermitError
from opsagent.policy.permits import verify_permit
from opsagent.policy.records import Permit
from opsagent.tools.http import call_tool
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolResult


class Executor:
    """Stateless apart from its HTTP connection pool; safe to run many side by side.

    A write runs only with a permit the policy signed for exactly this call (tool, arguments,
    case, step, unexpired): a component that skips the policy cannot write. Its idempotency key
    is derived from case and step, so a retried step is applied at most once.
    """

    def __init__(self, registry: ToolRegistry, permit_key: bytes, *, timeout: float = 10.0) -> None:
        self.registry = registry
        self.permit_key = permit_key
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def execute(
        self, tool: str, args: dict[str, Any], *, case_id: str, step: int,
        permit: Permit | None = None, dry_run: bool = False,
    ) -> ToolResult:
        """Run `tool` once. Transport and HTTP failures, and a refused permit, come back as
        `ToolResult(ok=False)` with the cause; a refused call never reaches the system."""
        spec = self.registry.get(tool)
        if spec.writes and not dry_run:
            try:
                verify_permit(permit, tool, args, case_id, step, self.permit_key)
            except PermitError as exc:
                now = datetime.now(UTC)
                return ToolResult(ok=False, status_code=None, body=None, error=f"refused: {exc}",
                                  started_at=now, finished_at=now, duration_ms=0.0)
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # a client belongs to one event loop
            self._client, self._loop = httpx.AsyncClient(timeout=self.timeout), loop
        return await call_tool(
            self._client, spec, self.registry.base_url(spec.system), args,
            idempotency_key=f"{case_id}:{step}" if spec.writes else None,
            dry_run=dry_run, timeout=self.timeout,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
