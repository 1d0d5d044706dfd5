"""A catalogue eval set planted on the session platform, its gold reference and both baselines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from opsagent.evals.catalogue import CLASSES, Instance, make, plant
from opsagent.evals.evalset import make_eval_set
from opsagent.evals.scoring import AgentRun, GoldReference, Snapshots, do_nothing, replay_gold, snapshots
from opsagent.tools.http import call_tool
from opsagent.tools.platform import Platform
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolResult


# (class, variant) of the instances the scorer tests run edited gold on, one each
EDITED = [("damage_claim", "credit_small"), ("stock_count_mismatch", "recount"),
          ("address_rejected", "correct_from_erp"), ("missed_pickup", "reschedule"),
          ("tracking_stuck", "declared_lost")]


@dataclass
class Sets:
    """Instances planted on the session platform once, with one gold reference for all of them."""

    baseline: list[Instance]  # 3 of every class: every variant
    edited: dict[tuple[str, str], Instance]
    runner: list[Instance]  # one of every variant of every class, for runs through the agent runner
    reference: GoldReference


@pytest.fixture(scope="session")
def sets(platform: Platform) -> Sets:
    baseline = make_eval_set(seed=4242, per_class=3)
    edited = {(n, v): next(i for i in make(n, seed=4300 + k, count=4) if i.variant == v)
              for k, (n, v) in enumerate(EDITED)}
    runner = []
    for name, cls in CLASSES.items():
        pool = make(name, seed=4400, count=4)
        runner += [next(i for i in pool if i.variant == v) for v in cls.variants]
    everything = [*baseline, *edited.values(), *runner]
    plant(everything, platform)
    return Sets(baseline, edited, runner, GoldReference.build(everything))


@dataclass
class Baselines:
    instances: list[Instance]
    reference: GoldReference
    before: Snapshots  # the agent platform as planted (what the do-nothing agent leaves)
    nothing: dict[str, AgentRun]
    after: Snapshots  # after the gold replay
    gold: dict[str, AgentRun]


@pytest.fixture(scope="session")
def baselines(sets: Sets, platform: Platform, registry: ToolRegistry) -> Baselines:
    """Both baselines run on the baseline set (only its own rows are compared, so the other
    planted sets do not matter)."""
    nothing = {i.instance_id: do_nothing(i, registry) for i in sets.baseline}
    before = snapshots(platform)
    gold = {i.instance_id: replay_gold(i, registry) for i in sets.baseline}
    return Baselines(sets.baseline, sets.reference, before, nothing, snapshots(platform), gold)


@pytest.fixture(scope="module")
def read(registry: ToolRegistry) -> Iterator[Callable[..., ToolResult]]:
    """`read(tool, **args)`: one call through the tool's OpenAPI-derived spec (one event loop and
    client for the module)."""
    runner = asyncio.Runner()
    client = runner.run(_client())

    def call(tool: str, **args: Any) -> ToolResult:
        spec = registry.get(tool)
        return runner.run(call_tool(client, spec, registry.base_url(spec.system), args))

    yield call
    runner.run(client.aclose())
    runner.close()


async def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=10.0)


@pytest.fixture(scope="session")
def gold_responder() -> Callable[[list[Instance]], Callable[..., dict[str, Any]]]:
    """`gold_responder(instances)`: a scripted-engine step that follows the gold of whichever of
    `instances` the case is about (matched by its entities), and escalates anything else (the
    planner's warm-up calls)."""
    import json

    from opsagent.agents.playbooks.model import builtin_playbooks
    from opsagent.evals.gold import conversation, scripted_gold

    def make(instances: list[Instance]) -> Callable[..., dict[str, Any]]:
        books = builtin_playbooks()
        by_entities = {json.dumps(i.entities, sort_keys=True): scripted_gold(i, books[i.exception_type])
                       for i in instances}

        def respond(request: Any) -> dict[str, Any]:
            _, entities, _ = conversation(request)
            gold = by_entities.get(json.dumps(entities, sort_keys=True))
            if gold is None:
                return {"tool": "finish", "status": "escalated", "reason": "not an instance of the set"}
            return gold(request)

        return respond

    return make
