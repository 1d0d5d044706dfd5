"""Fresh catalogue instances planted on the session platform, and a faster `call`."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from opsagent.evals.catalogue import Instance, make, plant
from opsagent.tools.http import call_tool
from opsagent.tools.platform import Platform
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolResult

_SEEDS = itertools.count(70_000)


@pytest.fixture
def planted(platform: Platform) -> Callable[[str, str], Instance]:
    """`planted(class, variant)`: a freshly planted instance of that variant no other test touches."""

    def plant_one(name: str, variant: str) -> Instance:
        for _ in range(5):
            found = [i for i in make(name, seed=next(_SEEDS), count=4) if i.variant == variant]
            if found:
                plant(found[:1], platform)
                return found[0]
        raise AssertionError(f"no {variant} instance of {name}")

    return plant_one


@pytest.fixture(scope="module")
def call(registry: ToolRegistry) -> Iterator[Callable[..., ToolResult]]:
    """`call(name, args, **kwargs)`: one `call_tool`, over one event loop and client per module
    (a fresh loop and client per call costs ten times the call itself)."""
    runner = asyncio.Runner()
    client = runner.run(_client())

    def _call(name: str, args: dict, **kwargs: Any) -> ToolResult:
        spec = registry.get(name)
        return runner.run(call_tool(client, spec, registry.base_url(spec.system), args, **kwargs))

    yield _call
    runner.run(client.aclose())
    runner.close()


async def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=10.0)


def gold_args(inst: Instance, tool: str) -> dict:
    """The arguments of the gold's call to `tool`."""
    return dict(next(a for a in inst.gold.actions if a.tool == tool).args)
