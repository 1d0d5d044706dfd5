"""The executor: carries out one tool call against a system of record and returns what it saw."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx

from opsagent.errors import PermitError, SecretError
from opsagent.policy.permit_uses import PermitUses
from opsagent.policy.permits import PermitSigner, PermitVerifier, as_verifier
from opsagent.policy.records import Permit
from opsagent.tools.http import call_tool
from opsagent.tools.mcp import McpPool
from opsagent.tools.redaction import Redactor
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.secrets import Secrets
from opsagent.tools.sources import McpSource, auth_headers
from opsagent.tools.spec import ToolResult


class Executor:
    """Stateless apart from its connections (an HTTP pool, a session per MCP server); safe to run
    many side by side.

    A write runs only with a permit the policy signed for exactly this call (tool, arguments,
    case, step, unexpired): a component that skips the policy cannot write. The executor holds
    only the policy's public keys (`PermitVerifier`). Each permit is used once: its nonce is
    recorded in `uses` before the call, and a second use is refused unless it retries the same
    call under the same idempotency key, which is derived from case and step, so a retried step is
    applied at most once (an MCP write carries it as its argument or in `_meta`).

    A call goes the way its tool's source says: an HTTP request (OpenAPI) or tools/call on an
    MCP server. Auth headers and server secrets are resolved here, at call time, from `secrets`
    (the environment and the $OPSAGENT_SECRETS file), and every known secret value is redacted
    from the result before it is returned, so none reaches traces, prompts or logs.
    """

    def __init__(self, registry: ToolRegistry, verifier: PermitVerifier | PermitSigner, *,
                 timeout: float = 10.0, secrets: Secrets | None = None,
                 uses: PermitUses | None = None) -> None:
        """`verifier`: the policy's public keys (a `PermitSigner` is accepted only to build its
        verifier, for one-process tests; it is not kept). `uses`: the durable record of used
        permits (default: in memory, this executor only)."""
        self.registry = registry
        self.verifier = as_verifier(verifier)
        self.uses = uses if uses is not None else PermitUses()
        self.timeout = timeout
        self.secrets = secrets or Secrets()
        self._refs = [ref for source in registry.sources() for ref in source.secret_refs()]
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mcp = McpPool(self.secrets)

    async def execute(
        self, tool: str, args: dict[str, Any], *, case_id: str, step: int,
        permit: Permit | None = None, dry_run: bool = False,
    ) -> ToolResult:
        """Run `tool` once. Transport, HTTP and MCP failures, a missing secret, and a refused
        permit come back as `ToolResult(ok=False)` with the cause; a refused call never reaches
        the system."""
        spec = self.registry.get(tool)
        key = f"{case_id}:{step}" if spec.writes and spec.idempotency is not None else None
        if spec.writes and not dry_run:
            try:
                checked = self.verifier.verify(permit, tool, args, case_id, step)
                self.uses.claim(checked, key)  # durably, before anything is sent
            except PermitError as exc:
                return _failed(f"refused: {exc}")
        source = self.registry.source(spec.system)
        redact = Redactor(self.secrets.known_values(self._refs))
        if isinstance(source, McpSource):
            result = await self._mcp.call(spec, source, args, dry_run=dry_run, timeout=self.timeout,
                                          idempotency_key=key)
            return redact.result(result)
        try:
            headers = auth_headers(source.auth, self.secrets)
        except SecretError as exc:
            return _failed(f"cannot call {tool}: {exc}")
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:  # a client belongs to one event loop
            self._client, self._loop = httpx.AsyncClient(timeout=self.timeout), loop
        result = await call_tool(
            self._client, spec, source.base_url, args,
            idempotency_key=key,
            dry_run=dry_run, timeout=source.timeout_s or self.timeout, headers=headers,
            retries=source.retries, backoff_s=source.backoff_s,
        )
        return redact.result(result)

    async def close(self) -> None:
        """Close the HTTP pool and every MCP session (stdio servers are stopped)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        await self._mcp.close()


def _failed(error: str) -> ToolResult:
    now = datetime.now(UTC)
    return ToolResult(ok=False, status_code=None, body=None, error=error, started_at=now, finished_at=now,
                      duration_ms=0.0)
