"""One meaning of automation: on 3 cases of which 1 resolved on its own and 2 wait for approval,
the overview (API and console page) and its per-class row agree: 1 of 3, with 2 shown open."""

from __future__ import annotations

import time

import httpx

from opsagent.agents.engines import ScriptedEngine
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.tools.platform import inject_weight_mismatch
from tests.fakes.held_planner import held_then_decided
from tests.fakes.local_actors import local_front_door


def test_the_overview_counts_open_cases_apart_and_agrees_with_its_class_row(platform, tmp_path):
    good = inject_weight_mismatch(platform, count=1, seed=7601, suspect_share=0.0)
    risky = inject_weight_mismatch(platform, count=2, seed=7602, suspect_share=0.0)
    engine = ScriptedEngine([held_then_decided({r.entities["shipment_id"] for r in risky})] * 9)  # 3 cases' model calls, as the test runs them
    with local_front_door(platform.registry(), tmp_path, engine=engine,
                          playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]},
                          modes={"weight_mismatch": "autonomous"}) as door, \
            httpx.Client(base_url=door.url, headers=door.headers("admin"), timeout=30) as client:
        for inst in [*good, *risky]:
            client.post("/v1/exceptions", json={"exception_type": inst.exception_type,
                                                "description": inst.description, "entities": inst.entities})
        deadline = time.monotonic() + 60
        overview = {}
        while time.monotonic() < deadline:
            overview = client.get("/v1/overview").json()
            if overview["by_status"] == {"resolved": 1, "awaiting_approval": 2} and overview["open_approvals"] == 2:
                break
            time.sleep(0.1)
        assert overview["by_status"] == {"resolved": 1, "awaiting_approval": 2}, overview
        assert overview["automation_rate"] == round(1 / 3, 4)
        assert (overview["automated"], overview["cases"], overview["open_cases"]) == (1, 3, 2)
        (row,) = overview["per_class"]
        assert (row["automated"], row["cases"], row["open"]) == (1, 3, 2)
        page = httpx.get(f"{door.url}/console/overview", cookies={"opsagent_console": door.tokens["admin"]})
    assert page.status_code == 200
    assert "33%" in page.text and "1 of 3 cases resolved with no approval asked" in page.text
    assert "2 still open" in page.text and "100%" not in page.text
