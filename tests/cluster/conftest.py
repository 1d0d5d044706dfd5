"""Fixtures of the cluster tests (the Ray runtime itself is `ray_runtime` in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def front_door(platform, tmp_path_factory):
    """The front door's app over the real actor classes in this process (no Ray), with a
    scripted planner: gold steps, except that the shipments in `front_door.held` get a high-risk
    rebill held for approval. Weight mismatches to submit: `front_door.good`, `front_door.risky`."""
    from opsagent.agents.engines import ScriptedEngine
    from opsagent.agents.playbooks.model import builtin_playbooks
    from opsagent.tools.platform import inject_weight_mismatch
    from tests.fakes.held_planner import held_then_decided
    from tests.fakes.local_actors import local_front_door

    good = inject_weight_mismatch(platform, count=3, seed=7101, suspect_share=0.0)
    risky = inject_weight_mismatch(platform, count=4, seed=7102, suspect_share=0.0)
    engine = ScriptedEngine([held_then_decided({r.entities["shipment_id"] for r in risky})] * 500)
    playbooks = {"weight_mismatch": builtin_playbooks()["weight_mismatch"]}
    with local_front_door(platform.registry(), tmp_path_factory.mktemp("front"), engine=engine,
                          playbooks=playbooks, modes={"weight_mismatch": "autonomous"}) as door:
        door.good, door.risky = good, risky
        yield door
