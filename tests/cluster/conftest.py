"""Fixtures of the cluster tests (the Ray runtime itself is `ray_runtime` in tests/conftest.py)."""

from __future__ import annotations

import itertools

import pytest

_SEEDS = itertools.count(170_000, 10)  # each front door plants its own shipments


@pytest.fixture(scope="module")
def front_door(platform, tmp_path_factory):
    """The front door's app over the real actor classes in this process (no Ray), with a
    scripted planner: gold steps, except that the shipments in `front_door.held` get a high-risk
    rebill held for approval. Weight mismatches to submit: `front_door.good`, `front_door.risky`.

    The engine answers every call (`GoldScriptedEngine`: no script to use up): the module's tests
    share it, each submitting the cases it needs, and check those cases' end states."""
    from opsagent.evals.bench.soak import GoldScriptedEngine
    from opsagent.agents.playbooks.model import builtin_playbooks
    from opsagent.tools.platform import inject_weight_mismatch
    from tests.fakes.held_planner import held_then_decided
    from tests.fakes.local_actors import local_front_door

    seed = next(_SEEDS)  # fresh per module: no module sees shipments another one changed
    good = inject_weight_mismatch(platform, count=3, seed=seed, suspect_share=0.0)
    risky = inject_weight_mismatch(platform, count=4, seed=seed + 1, suspect_share=0.0)
    engine = GoldScriptedEngine(held_then_decided({r.entities["shipment_id"] for r in risky}))
    playbooks = {"weight_mismatch": builtin_playbooks()["weight_mismatch"]}
    with local_front_door(platform.registry(), tmp_path_factory.mktemp("front"), engine=engine,
                          playbooks=playbooks, modes={"weight_mismatch": "autonomous"}) as door:
        door.good, door.risky = good, risky
        yield door
