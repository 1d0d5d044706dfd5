"""Fixtures of the tools tests (the running platform itself comes from tests/conftest.py)."""

from __future__ import annotations

import asyncio
import secrets as _secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from opsagent.tools.http import call_tool
from opsagent.tools.importer import import_openapi
from opsagent.tools.platform import InjectedException, Platform, inject_weight_mismatch
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.sources import AuthHeader, McpSource, OpenAPISource
from opsagent.tools.spec import ToolResult
from tests.fakes.mcp_server import SCRIPT as MCP_SERVER
from tests.tools.echo_service import EchoState, serve


_SEEDS = iter(range(1000, 100_000))


@pytest.fixture
def fresh(platform: Platform) -> InjectedException:
    """A freshly planted, resolvable weight mismatch no other test touches."""
    return inject_weight_mismatch(platform, count=1, seed=next(_SEEDS), suspect_share=0.0)[0]


@pytest.fixture
def call(registry: ToolRegistry) -> Callable[..., ToolResult]:
    """`call(name, args, **kwargs)`: one `call_tool` through a fresh async client."""

    def _call(name: str, args: dict, **kwargs: Any) -> ToolResult:
        spec = registry.get(name)

        async def go() -> ToolResult:
            async with httpx.AsyncClient() as client:
                return await call_tool(client, spec, registry.base_url(spec.system), args, **kwargs)

        return asyncio.run(go())

    return _call


# --- tool sources: the echo service, the MCP test server --------------------------------------



@dataclass
class Echo:
    url: str
    state: EchoState
    token: str


@pytest.fixture(scope="session")
def echo() -> Iterator[Echo]:
    """The echo service, demanding a random bearer token (planted as ECHO_TOKEN by `echo_env`)."""
    token = "echo-" + _secrets.token_hex(12)
    with serve(token) as (url, state):
        yield Echo(url, state, token)


@pytest.fixture
def echo_env(echo: Echo, monkeypatch: pytest.MonkeyPatch) -> Echo:
    monkeypatch.setenv("ECHO_TOKEN", echo.token)
    return echo


@pytest.fixture
def echo_source(echo: Echo) -> OpenAPISource:
    """The echo service imported from its live OpenAPI document, auth from $ECHO_TOKEN."""
    imported = import_openapi(f"{echo.url}/openapi.json", "echo", echo.url,
                              auth=[AuthHeader(env="ECHO_TOKEN", scheme="Bearer")], retries=2)
    return imported.source.model_copy(update={"backoff_s": 0.01})


@pytest.fixture
def parcels_stdio() -> McpSource:
    """The MCP test server over stdio, its token from $PARCELS_TOKEN, tools prefixed `pcl_`."""
    return McpSource(name="parcels", transport="stdio", command=[sys.executable, MCP_SERVER],
                     env_secrets={"PARCELS_TOKEN": {"env": "PARCELS_TOKEN"}}, prefix="pcl_")
