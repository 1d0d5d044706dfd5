"""Fixtures of the tools tests (the running platform itself comes from tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from opsagent.tools.http import call_tool
from opsagent.tools.platform import InjectedException, Platform, inject_weight_mismatch
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolResult


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
