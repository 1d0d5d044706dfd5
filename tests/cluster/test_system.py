"""The whole system on a local Ray runtime, driven through the Serve endpoint, with a scripted
planner (the real-engine run is test_end_to_end.py)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from opsagent.agents.engines import ScriptedEngine
from opsagent.agents.tracing.views import query
from opsagent.cli import main as cli
from opsagent.cluster.config import SystemConfig
from opsagent.cluster.system import OpsAgentSystem
from opsagent.tools.platform import inject_weight_mismatch
from tests.fakes.planners import gold_except

FINAL = {"resolved", "escalated", "failed", "awaiting_approval"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scenario(ray_runtime, platform, tmp_path_factory):
    good = inject_weight_mismatch(platform, count=3, seed=9001, suspect_share=0.0)
    suspect = inject_weight_mismatch(platform, count=1, seed=9002, suspect_share=1.0)
    risky = inject_weight_mismatch(platform, count=1, seed=9003, suspect_share=0.0)
    responder = gold_except({risky[0].entities["shipment_id"]})
    engine = ScriptedEngine([responder] * (1 + 3 * 3 + 3 + 3))  # warm-up + exactly the gold calls
    traces = tmp_path_factory.mktemp("traces")
    system = OpsAgentSystem(SystemConfig(traces_dir=traces, executors=2), platform.registry(),
                            engine=engine).start()
    url = system.serve(port=_free_port())
    yield dict(system=system, url=url, traces=traces, good=good, suspect=suspect, risky=risky)
    system.stop()


def _submit(client, inst):
    r = client.post("/v1/exceptions", json={"exception_type": inst.exception_type,
                                            "description": inst.description, "entities": inst.entities})
    assert r.status_code == 202, r.text
    return r.json()["case_id"]


def _wait(client, case_ids, timeout=120):
    deadline = time.monotonic() + timeout
    views = {}
    while time.monotonic() < deadline:
        views = {cid: client.get(f"/v1/cases/{cid}").json() for cid in case_ids}
        if all(v["status"] in FINAL for v in views.values()):
            return views
        time.sleep(0.2)
    pytest.fail(f"cases not final in {timeout} s: {views}")


def test_cases_run_concurrently_to_their_gold_outcome(scenario, platform):
    with httpx.Client(base_url=scenario["url"], timeout=30) as client:
        everything = scenario["good"] + scenario["suspect"] + scenario["risky"]
        ids = {_submit(client, inst): inst for inst in everything}
        views = _wait(client, list(ids))
    by_status = {}
    for cid, inst in ids.items():
        by_status.setdefault(views[cid]["status"], []).append(inst)
    assert by_status.get("resolved") == scenario["good"], views
    assert by_status.get("escalated") == scenario["suspect"]
    assert by_status.get("awaiting_approval") == scenario["risky"]
    risky_view = next(v for cid, v in views.items() if ids[cid] in scenario["risky"])
    held = risky_view["steps"][-1]
    assert held["tool"] == "tms_adjust_billed_weight" and held["verdict"] == "require_approval"
    assert not held["executed"] and held["approval_id"]
    for inst in scenario["good"]:
        tms = httpx.get(f"{platform.base_urls['carrier']}/shipments/{inst.entities['shipment_id']}").json()
        assert tms["open_dispute_id"] is not None
    billed = httpx.get(f"{platform.base_urls['carrier']}/shipments/"
                       f"{scenario['risky'][0].entities['shipment_id']}").json()["billed_weight_kg"]
    assert billed != 0.5  # the held high-risk write never ran

    scenario["system"].flush_traces()
    root = scenario["traces"]
    _, rows = query(root, "SELECT status, count(*) FROM cases GROUP BY 1 ORDER BY 1")
    assert dict(rows) == {"awaiting_approval": 1, "escalated": 1, "resolved": 3}
    _, rows = query(root, "SELECT count(*) FROM actions WHERE executed AND writes AND NOT dry_run")
    assert rows == [(3,)]
    _, rows = query(root, "SELECT tool, status, approver FROM approvals")
    assert rows == [("tms_adjust_billed_weight", "pending", None)]
    _, rows = query(root, "SELECT count(*) FROM planner_calls")
    assert rows == [(15,)]


def test_bad_requests_get_clear_4xx(scenario):
    with httpx.Client(base_url=scenario["url"], timeout=30) as client:
        r = client.post("/v1/exceptions", json={"exception_type": "weight_mismatch", "description": ""})
        assert r.status_code == 422
        assert "entities" in r.json()["error"] and "description" in r.json()["error"]
        r = client.post("/v1/exceptions", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = client.post("/v1/exceptions", json={"exception_type": "Weight Mismatch!", "description": "x",
                                                "entities": {"shipment_id": "SHP-1"}})
        assert r.status_code == 422 and "exception_type" in r.json()["error"]
        r = client.post("/v1/exceptions", json={"exception_type": "weight_mismatch", "description": "x",
                                                "entities": {"shipment_id": "../../etc/passwd"}})
        assert r.status_code == 422 and "shipment_id" in r.json()["error"]
        assert client.get("/v1/cases/case-doesnotexist").status_code == 404
        assert client.get("/v1/health").json()["status"] == "ok"


def test_traces_sql_cli_prints_csv(scenario, capsys):
    scenario["system"].flush_traces()
    code = cli(["traces", "sql", "--traces", str(scenario["traces"]), "--csv",
                "SELECT exception_type, count(*) AS n FROM cases GROUP BY 1"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "exception_type,n" and lines[1].startswith("weight_mismatch,")
    assert cli(["traces", "sql", "--traces", str(scenario["traces"]), "SELECT nope FROM cases"]) == 2
