"""The executor: carries out one tool call against a system of record and returns what it saw."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from opsagent.tools.http import call_tool
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolResult


class Executor:
    """Stateless apart from its HTTP connection pool; safe to run many side by side."""

    def __init__(self, registry: ToolRegistry, *, timeout: float = 10.0) -> None:
        self.registry = registry
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def execute(
        self, tool: str, args: dict[str, Any], *, idempotency_key: str | None, dry_run: bool = False
    ) -> ToolResult:
        """Run `tool` once. Transport and HTTP failures come back as `ToolResult(ok=False)`."""
        spec = self.registry.get(tool)
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # a client belongs to one event loop
            self._client, self._loop = httpx.AsyncClient(timeout=self.timeout), loop
        return await call_tool(
            self._client, spec, self.registry.base_url(spec.system), args,
            idempotency_key=idempotency_key if spec.writes else None,
            dry_run=dry_run, timeout=self.timeout,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
