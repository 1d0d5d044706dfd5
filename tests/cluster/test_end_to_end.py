"""The real stack: vLLM's engine on the embedded model in the planner actor, Ray actors, Serve."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from opsagent.agents.tracing.report import UNSUPERVISED_HIGH_RISK
from opsagent.agents.tracing.views import query
from opsagent.cluster.config import PlannerConfig, SystemConfig
from opsagent.cluster.demo import promote_for_demo
from opsagent.cluster.system import OpsAgentSystem
from opsagent.policy.identity import TokenStore
from opsagent.tools.platform import inject_weight_mismatch

pytestmark = [pytest.mark.engine, pytest.mark.ray]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_weight_mismatches_end_to_end_on_the_embedded_model(ray_runtime, platform, tmp_path):
    instances = inject_weight_mismatch(platform, count=4, seed=424242, suspect_share=0.5)
    config = SystemConfig(traces_dir=tmp_path, state_dir=tmp_path / "state",
                          planner=PlannerConfig(warm_classes=["weight_mismatch"]))
    system = OpsAgentSystem(config, platform.registry()).start()
    try:
        assert system.model == "SmolLM2-135M-Instruct"
        promote_for_demo(system)  # the shipped policy starts every class in shadow
        url = system.serve(port=_free_port())
        token = TokenStore(system.tokens_path).add("ops", ["submitter"])
        with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"}) as client:
            ids = {}
            for inst in instances:
                r = client.post("/v1/exceptions", json={
                    "exception_type": inst.exception_type, "description": inst.description,
                    "entities": inst.entities})
                assert r.status_code == 202, r.text
                ids[r.json()["case_id"]] = inst
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                views = {cid: client.get(f"/v1/cases/{cid}").json() for cid in ids}
                if all(v["status"] not in ("received", "planning", "executing") for v in views.values()):
                    break
                time.sleep(1)
        system.flush_traces()
    finally:
        system.stop()

    # Each case ends as its gold says. The instances are fixed (seed) and the model decodes at
    # temperature 0, so the outcome is deterministic: on this set the embedded model is expected
    # to be right on all four (half need a dispute, half an escalation), and any miss is a regression.
    outcomes = {cid: (view["status"], ids[cid].expected_status) for cid, view in views.items()}
    assert all(got == want for got, want in outcomes.values()), outcomes
    for cid, view in views.items():
        sid = ids[cid].entities["shipment_id"]
        tms = httpx.get(f"{platform.base_urls['tms']}/shipments/{sid}").json()
        if view["status"] == "resolved":  # resolved only after its dispute really exists
            assert tms["open_dispute_id"] is not None
            assert view["steps"][-1]["tool"] == "tms_open_weight_dispute"
            dispute = httpx.get(f"{platform.base_urls['tms']}/weight-disputes/{tms['open_dispute_id']}").json()
            assert dispute["claimed_weight_kg"] == ids[cid].facts["scanned_weight_kg"], dispute
        else:
            assert tms["open_dispute_id"] is None  # an escalated case disputed nothing
    _, rows = query(tmp_path, "SELECT decided_by, model, finish_reason, count(*) FROM planner_calls GROUP BY ALL")
    assert rows and all((r[0], r[1], r[2]) in {("model", "SmolLM2-135M-Instruct", "stop"), ("rule", "rule", "rule")}
                        for r in rows), rows
    # the engine scored the candidates: every model decision has its confidence and candidates
    _, rows = query(tmp_path, "SELECT count(*), count(*) FILTER (WHERE confidence > 0 AND confidence <= 1 "
                              "AND json_array_length(candidates) >= 2) FROM planner_calls WHERE decided_by = 'model'")
    assert rows[0][0] > 0 and rows[0][0] == rows[0][1], rows
    _, rows = query(tmp_path, "SELECT count(DISTINCT case_id) FROM cases WHERE finished_at IS NOT NULL")
    assert rows == [(len(ids),)]
    assert query(tmp_path, UNSUPERVISED_HIGH_RISK)[1] == [(0,)]
