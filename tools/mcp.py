"""MCP servers as a tool source, through the official `mcp` SDK (stdio or streamable HTTP).

Listing: each MCP tool becomes a `ToolSpec` (`source="mcp"`, `system` = the source's name,
`path` = the tool's name on the server). Its `inputSchema` is the parameters schema the policy
validates against (titles dropped, local `$ref`s inlined, `additionalProperties: false` unless the
schema says otherwise). The annotations tell reads from writes: only `readOnlyHint: true` is a
read; no annotations is a write. `destructiveHint` not false marks the write irreversible.

Dry run (the convention opsagent reads): a tool whose input schema has a boolean `dry_run`
property previews the call when it is true and changes nothing. That property is not offered
to the planner; the executor sends `dry_run: true` for a preview and `dry_run: false` for the
real call. A write without it cannot be previewed: its spec says `supports_dry_run=False` and
the policy treats it as high risk (`opsagent.policy.no_dry_run`).

Idempotency (the convention opsagent reads): a write whose input schema has a string
`idempotency_key` property gets the executor's key there (not offered to the planner either);
otherwise, for a source that declares `idempotent_meta: true`, in the call's `_meta` under
`IDEMPOTENCY_META`. A write with neither cannot be made idempotent: the policy treats it as high
risk and the executor sends it at most once (`opsagent.policy.no_dry_run`, `policy.permit_uses`).

Calls: an `McpPool` keeps one session per server open (a background task owns it, as the SDK
needs), reconnects after a failure, retries reads (never writes),
and turns every failure into `ToolResult(ok=False)`. A stdio server gets its secrets in its
environment; what it writes to stderr is logged here (INFO) with every secret redacted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from opsagent.errors import SecretError, ToolCallError, ToolError
from opsagent.tools.openapi import _clean
from opsagent.tools.redaction import Redactor
from opsagent.tools.secrets import Secrets
from opsagent.tools.sources import McpSource, auth_headers
from opsagent.tools.spec import ToolResult, ToolSpec

log = logging.getLogger(__name__)

DRY_RUN_ARG = "dry_run"
IDEMPOTENCY_ARG = "idempotency_key"
IDEMPOTENCY_META = "io.opsagent/idempotency-key"
CONNECT_TIMEOUT_S = 30.0
_MAX_PAGES = 100


def tool_spec(tool: Any, source: McpSource) -> ToolSpec | None:
    """The ToolSpec of one listed MCP tool (an `mcp.types.Tool`); None if the source excludes it."""
    override = source.tools.get(tool.name)
    if override is not None and override.exclude:
        return None
    raw = tool.input_schema or {"type": "object"}
    try:
        schema = _clean(raw, {k: v for k, v in raw.items() if k not in ("$defs", "definitions")})
    except ToolError as exc:
        raise ToolError(f"{source.name}: MCP tool {tool.name!r}: {exc}") from exc
    if schema.get("type") != "object":
        raise ToolError(f"{source.name}: MCP tool {tool.name!r}: its input schema is not an object")
    props = dict(schema.get("properties") or {})
    dry_run = (props.get(DRY_RUN_ARG) or {}).get("type") == "boolean"
    if dry_run:
        props.pop(DRY_RUN_ARG)
    keyed = _takes_string(props.get(IDEMPOTENCY_ARG))
    if keyed:
        props.pop(IDEMPOTENCY_ARG)
    schema = {**schema, "properties": props, "required": [r for r in schema.get("required", [])
                                                         if r not in (DRY_RUN_ARG, IDEMPOTENCY_ARG)]}
    schema.setdefault("additionalProperties", False)
    hints = tool.annotations
    writes = not (hints is not None and hints.read_only_hint is True)
    if override is not None and override.writes is not None:
        writes = override.writes
    destructive = hints is None or hints.destructive_hint is not False
    text = "\n\n".join(p for p in (tool.title or (hints.title if hints else None), tool.description) if p)
    return ToolSpec(
        name=f"{source.prefix}{tool.name}",
        system=source.name,
        source="mcp",
        method="MCP",
        path=tool.name,
        description=text or tool.name,
        parameters=schema,
        path_params=[],
        body_params=list(props),
        writes=writes,
        reversible=(False if destructive else None) if writes else None,
        inverse=None,
        supports_dry_run=dry_run,
        idempotency=(("argument" if keyed else "meta" if source.idempotent_meta else None)
                     if writes else None),
    )


async def list_tools(source: McpSource, secrets: Secrets | None = None) -> list[ToolSpec]:
    """Every tool the server lists (ToolCallError if it cannot be reached, ToolError for a bad tool)."""
    secrets = secrets or Secrets()
    unknown = set(source.tools)
    listed: list[Any] = []
    specs: list[ToolSpec] = []
    try:
        async with asyncio.timeout(max(CONNECT_TIMEOUT_S, source.timeout_s or 0)):
            async with open_client(source, secrets) as client:
                cursor = None
                for _ in range(_MAX_PAGES):
                    page = await client.list_tools(cursor=cursor)
                    listed += page.tools
                    cursor = page.next_cursor
                    if cursor is None:
                        break
    except SecretError:
        raise
    except Exception as exc:  # noqa: BLE001 - the SDK raises many kinds, groups included
        raise ToolCallError(f"cannot list the tools of MCP server {source.name!r}: {_cause(exc)}") from exc
    for tool in listed:
        unknown.discard(tool.name)
        if (spec := tool_spec(tool, source)) is not None:
            specs.append(spec)
    if unknown:
        raise ToolError(f"{source.name}: overrides name tools the server does not list: {', '.join(sorted(unknown))}")
    return specs


@asynccontextmanager
async def open_client(source: McpSource, secrets: Secrets) -> AsyncIterator[Any]:
    """An initialised `mcp.Client` for the source; secrets resolved now, in this process."""
    from mcp import Client

    if source.transport == "stdio":
        server: Any = _stdio_transport(source, secrets)
    else:
        server = _http_transport(source.url or "", auth_headers(source.auth, secrets))
    async with Client(server, cache=None, read_timeout_seconds=source.timeout_s) as client:
        yield client


@asynccontextmanager
async def _stdio_transport(source: McpSource, secrets: Secrets) -> AsyncIterator[Any]:
    """Start the server with its secrets in its environment; its stderr goes, redacted, to this
    module's logger (a server may well log the token it was given)."""
    from mcp import StdioServerParameters
    from mcp.client.stdio import stdio_client

    env = {**source.env, **{name: secrets.get(ref) for name, ref in source.env_secrets.items()}}
    assert source.command  # checked by the config
    params = StdioServerParameters(command=source.command[0], args=source.command[1:], env=env or None,
                                   cwd=source.cwd)
    redact = Redactor(secrets.known_values(source.secret_refs()))
    read_fd, write_fd = os.pipe()
    errlog = os.fdopen(write_fd, "w")
    forward = threading.Thread(target=_forward_stderr, args=(os.fdopen(read_fd, errors="replace"), redact,
                                                             source.name), name=f"mcp-{source.name}-stderr",
                               daemon=True)
    forward.start()
    try:
        async with stdio_client(params, errlog=errlog) as streams:
            yield streams
    finally:
        errlog.close()  # the thread ends once the server's copy closes too


def _forward_stderr(stream: Any, redact: Redactor, name: str) -> None:
    with stream:
        for line in stream:
            if line.strip():
                log.info("MCP server %s: %s", name, redact.text(line.rstrip()))


@asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str]) -> AsyncIterator[Any]:
    import httpx2  # the SDK's HTTP client
    from mcp.client.streamable_http import streamable_http_client

    # the SDK's own defaults: a server may hold the event stream open for a long time
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
        async with streamable_http_client(url, http_client=http) as streams:
            yield streams


class _Connection:
    """One open session, owned by a background task (the SDK's context must be entered and left
    in the same task); calls from any task of the same loop use it."""

    def __init__(self, source: McpSource, secrets: Secrets) -> None:
        self.source, self.secrets = source, secrets
        self.client: Any = None
        self.loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = self.loop.create_future()
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def alive(self) -> bool:
        return self.client is not None and self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._task = self.loop.create_task(self._own())
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await asyncio.shield(self._ready)
        except BaseException:
            await self.close()
            raise

    async def _own(self) -> None:
        try:
            async with open_client(self.source, self.secrets) as client:
                self.client = client
                self._ready.set_result(None)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc if isinstance(exc, Exception) else ToolCallError("cancelled"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self.client = None

    async def close(self) -> None:
        self._stop.set()
        if self._task is None or self._task.done():
            return
        try:
            async with asyncio.timeout(10):
                await asyncio.shield(self._task)
        except BaseException:  # noqa: BLE001 - a server that does not go quietly is cancelled
            self._task.cancel()


class McpPool:
    """The executor's sessions to MCP servers, one per source, reused across calls."""

    def __init__(self, secrets: Secrets | None = None) -> None:
        self.secrets = secrets or Secrets()
        self._connections: dict[str, _Connection] = {}
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def call(self, spec: ToolSpec, source: McpSource, args: dict[str, Any], *, dry_run: bool = False,
                   timeout: float = 10.0, idempotency_key: str | None = None) -> ToolResult:
        """Call one MCP tool, a write with `idempotency_key` where its spec says it takes one.
        ToolError for a programming error (unknown argument, dry run of a tool without one);
        every other failure is a ToolResult(ok=False) with the whole error text (the executor
        redacts it, then cuts it)."""
        if dry_run and not spec.supports_dry_run:
            raise ToolError(f"{spec.name} does not support dry runs")
        unknown = sorted(set(args) - set(spec.body_params))
        if unknown:
            raise ToolError(f"{spec.name}: unknown argument(s) {', '.join(unknown)}")
        sent = {**args, DRY_RUN_ARG: dry_run} if spec.supports_dry_run else dict(args)
        meta: dict[str, Any] | None = None
        if idempotency_key is not None and not dry_run:
            if spec.idempotency == "argument":
                sent[IDEMPOTENCY_ARG] = idempotency_key
            elif spec.idempotency == "meta":
                meta = {IDEMPOTENCY_META: idempotency_key}
        timeout = source.timeout_s or timeout
        tries = 1 + (source.retries if (not spec.writes or dry_run) else 0)
        started, t0 = datetime.now(UTC), time.perf_counter()
        attempt, error = 0, "not called"
        while attempt < tries:
            attempt += 1
            try:
                connection = await self._connection(source)
                async with asyncio.timeout(timeout):
                    result = await connection.client.call_tool(spec.path, sent, read_timeout_seconds=timeout,
                                                               meta=meta)
            except SecretError as exc:
                error = f"cannot call {spec.name}: {exc}"
                break
            except TimeoutError:
                error = f"timed out after {timeout:g}s"
                await self._drop(source.name)
            except Exception as exc:  # noqa: BLE001 - transport, protocol or server failure
                error = f"MCP call failed: {_cause(exc)}"
                await self._drop(source.name)
            else:
                body = _body(result)
                failed = bool(result.is_error)
                return ToolResult(
                    ok=not failed, status_code=None, body=body, dry_run=dry_run, attempts=attempt,
                    error=f"MCP tool error: {_text(body)}" if failed else None,
                    started_at=started, finished_at=datetime.now(UTC),
                    duration_ms=(time.perf_counter() - t0) * 1000)
        return ToolResult(ok=False, status_code=None, body=None, error=error, dry_run=dry_run, attempts=attempt,
                          started_at=started, finished_at=datetime.now(UTC),
                          duration_ms=(time.perf_counter() - t0) * 1000)

    async def _connection(self, source: McpSource) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # sessions belong to one event loop; the old loop's are gone
            self._connections, self._lock, self._loop = {}, asyncio.Lock(), loop
        assert self._lock is not None
        async with self._lock:
            current = self._connections.get(source.name)
            if current is not None and current.alive and current.source == source:
                return current
            if current is not None:
                await current.close()
            connection = _Connection(source, self.secrets)
            await connection.start()
            self._connections[source.name] = connection
            return connection

    async def _drop(self, name: str) -> None:
        connection = self._connections.pop(name, None)
        if connection is not None:
            await connection.close()

    async def close(self) -> None:
        """Close every session (stdio servers are stopped)."""
        if self._loop is not asyncio.get_running_loop():
            self._connections = {}
            return
        for name in list(self._connections):
            await self._drop(name)


def _takes_string(prop: Any) -> bool:
    """A property schema that accepts a string (`type: string`, or a string in its anyOf)."""
    if not isinstance(prop, dict):
        return False
    kinds = prop.get("type")
    if kinds == "string" or (isinstance(kinds, list) and "string" in kinds):
        return True
    return any(_takes_string(p) for p in prop.get("anyOf", []))


def _body(result: Any) -> Any:
    """Structured content if the tool gave it; else its one text block (parsed if JSON), else the
    content blocks as JSON."""
    if result.structured_content is not None:
        return result.structured_content
    blocks = list(result.content or [])
    if len(blocks) == 1 and getattr(blocks[0], "type", None) == "text":
        text = blocks[0].text
        try:
            return json.loads(text)
        except ValueError:
            return text
    return [b.model_dump(mode="json", by_alias=True, exclude_none=True) for b in blocks] or None


def _text(body: Any) -> str:
    return body if isinstance(body, str) else json.dumps(body, default=str)


def _cause(exc: BaseException) -> str:
    """The innermost useful message of an exception (task groups wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
