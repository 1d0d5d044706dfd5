"""Build a `ToolRegistry` from tool sources: read OpenAPI documents, ask MCP servers for tools."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

from opsagent.errors import SecretError, ToolCallError, ToolError
from opsagent.tools.mcp import list_tools
from opsagent.tools.openapi import apply_overrides, tools_from_openapi
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.secrets import Secrets
from opsagent.tools.sources import McpSource, OpenAPISource, auth_headers
from opsagent.tools.spec import ToolSpec

T = TypeVar("T")


def read_document(location: str, *, headers: dict[str, str] | None = None, timeout: float = 10.0) -> dict:
    """A JSON or YAML document from a file path or an http(s) URL.

    ToolCallError if a URL cannot be fetched, ToolError if the file is missing or not a mapping.
    """
    if location.startswith(("http://", "https://")):
        try:
            response = httpx.get(location, headers=headers, timeout=timeout, follow_redirects=False)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ToolCallError(f"cannot fetch {location}: {type(exc).__name__}: {exc}") from exc
        text = response.text
    else:
        try:
            text = Path(location).read_text()
        except OSError as exc:
            raise ToolError(f"cannot read {location}: {exc.strerror or exc}") from exc
    try:
        doc: Any = json.loads(text)
    except ValueError:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ToolError(f"{location} is neither JSON nor YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ToolError(f"{location} does not hold a mapping (an OpenAPI document is one)")
    return doc


def openapi_document(source: OpenAPISource, secrets: Secrets | None = None) -> dict:
    """The source's document: embedded, or read from `spec` (default {base_url}/openapi.json).
    Auth headers go only to the source's own base URL."""
    if source.document is not None:
        return source.document
    location = source.spec or f"{source.base_url.rstrip('/')}/openapi.json"
    headers = None
    if source.auth and location.startswith(source.base_url.rstrip("/") + "/"):
        try:
            headers = auth_headers(source.auth, secrets or Secrets())
        except SecretError:
            headers = None  # try without: many services publish their document openly
    return read_document(location, headers=headers, timeout=source.timeout_s or 10.0)


def openapi_tools(source: OpenAPISource, secrets: Secrets | None = None, *,
                  doc: dict | None = None) -> list[ToolSpec]:
    """The source's tools, its per-operation overrides applied."""
    doc = openapi_document(source, secrets) if doc is None else doc
    overrides = {op: o.model_dump(exclude_defaults=True) for op, o in source.operations.items()}
    return tools_from_openapi(apply_overrides(doc, overrides, source.name), source.name)


def build_registry(sources: Sequence[OpenAPISource | McpSource], *, secrets: Secrets | None = None,
                   base: ToolRegistry | None = None) -> ToolRegistry:
    """A registry of every source's tools, added to `base` if given (ToolError on a name clash)."""
    secrets = secrets or Secrets()
    specs: list[ToolSpec] = []
    for source in sources:
        if isinstance(source, OpenAPISource):
            specs += openapi_tools(source, secrets)
        else:
            specs += run_sync(list_tools(source, secrets))
    registry = ToolRegistry(specs, sources=sources)
    return base.merge(registry) if base is not None else registry


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, in a thread if a loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="opsagent-run-sync")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
