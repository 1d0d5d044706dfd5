"""The whole system on a local Ray runtime, driven through the Serve endpoint, with a scripted
planner (the real-engine run is test_end_to_end.py)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
import ray

from opsagent.agents.engines import ScriptedEngine
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.report import UNSUPERVISED_HIGH_RISK
from opsagent.agents.tracing.views import query
from opsagent.cli import main as cli
from opsagent.cluster.config import SystemConfig
from opsagent.cluster.system import OpsAgentSystem
from opsagent.policy.identity import TokenStore
from opsagent.tools.platform import inject_weight_mismatch
from tests.fakes import leftovers
from tests.fakes.autonomy import credential
from tests.fakes.planners import gold_except

pytestmark = pytest.mark.ray

FINAL = {"resolved", "escalated", "failed", "awaiting_approval"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scenario(ray_runtime, platform, tmp_path_factory):
    good = inject_weight_mismatch(platform, count=3, seed=9001, suspect_share=0.0)
    suspect = inject_weight_mismatch(platform, count=1, seed=9002, suspect_share=1.0)
    risky = inject_weight_mismatch(platform, count=2, seed=9003, suspect_share=0.0)
    responder = gold_except({r.entities["shipment_id"] for r in risky})
    # the warm-up's call; the stages below (`ran`, `decided`) add the calls each expects
    engine = ScriptedEngine([responder])
    traces, state = tmp_path_factory.mktemp("traces"), tmp_path_factory.mktemp("state")
    # only weight_mismatch's playbook, so the warm-up is one call whatever the catalogue holds
    system = OpsAgentSystem(SystemConfig(traces_dir=traces, state_dir=state, executors=2),
                            platform.registry(), engine=engine,
                            playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]}).start()
    # the shipped policy starts every class in shadow: an admin promotes the one these tests run
    ray.get(system.handles["policy"].set_mode.remote("weight_mismatch", "autonomous", credential(system.tokens_path),
                                                     "test: resolve weight mismatches"))
    url = system.serve(port=_free_port())
    tokens = TokenStore(system.tokens_path)
    auth = {role: {"Authorization": f"Bearer {tokens.add(role, [role])}"}
            for role in ("submitter", "approver", "auditor", "admin")}
    scenario = dict(system=system, url=url, traces=traces, good=good, suspect=suspect, risky=risky,
                    auth=auth, cases={}, responder=responder)
    yield scenario
    try:
        unused = leftovers.ray_planner_leftovers(system.handles["planners"])
    finally:
        system.stop()
    leftovers.settle(engine)  # the actors' copies were checked instead
    assert unused == {}, f"scripted steps left unused in the planner actors: {unused}"


@pytest.fixture(scope="module")
def ran(scenario, platform):
    """The six cases submitted at once and run to where they stop (3 model calls each), with
    what the traces said right then."""
    leftovers.ray_planner_extend(scenario["system"].handles["planners"], [scenario["responder"]] * 3 * 6)
    with _client(scenario) as client:
        everything = scenario["good"] + scenario["suspect"] + scenario["risky"]
        ids = {_submit(client, inst): inst for inst in everything}
        views = _wait(client, list(ids))
    scenario["cases"].update(ids)
    scenario["system"].flush_traces()
    root = scenario["traces"]
    sql = {name: query(root, text)[1] for name, text in {
        "statuses": "SELECT status, count(*) FROM cases GROUP BY 1 ORDER BY 1",
        "writes": "SELECT count(*) FROM actions WHERE executed AND writes AND NOT dry_run",
        "approvals": "SELECT tool, status, approver FROM approvals",
        "calls": "SELECT decided_by, count(*) FROM planner_calls GROUP BY 1 ORDER BY 1"}.items()}
    billed = [_tms(platform, inst)["billed_weight_kg"] for inst in scenario["risky"]]
    return dict(ids=ids, views=views, sql=sql, risky_billed=billed)


@pytest.fixture(scope="module")
def decided(scenario, ran):
    """The approver's requests on the two held rebills (and the refused ones around them): the
    first approved, the second rejected; then both cases' ends (one model call each)."""
    leftovers.ray_planner_extend(scenario["system"].handles["planners"], [scenario["responder"]] * 2)
    r = {}
    with _client(scenario, "approver") as approver:
        r["pending"] = pending = approver.get("/v1/approvals", params={"status": "pending"}).json()
        first, second = pending
        with _client(scenario, "submitter") as submitter:
            r["submitter_approves"] = submitter.post(f"/v1/approvals/{first['approval_id']}/approve",
                                                     json={"args_digest": first["args_digest"]})
            r["submitter_lists"] = submitter.get("/v1/approvals")
        with _client(scenario, None) as anonymous:
            r["anonymous_lists"] = anonymous.get("/v1/approvals")
            r["anonymous_submits"] = anonymous.post("/v1/exceptions", json={})
        r["wrong_digest"] = approver.post(f"/v1/approvals/{first['approval_id']}/approve",
                                          json={"args_digest": "0" * 64})
        r["approver_in_body"] = approver.post(f"/v1/approvals/{first['approval_id']}/approve",
                                              json={"args_digest": first["args_digest"], "approver": "ceo"})
        r["approved"] = approver.post(f"/v1/approvals/{first['approval_id']}/approve",
                                      json={"args_digest": first["args_digest"]})
        r["rejected"] = approver.post(f"/v1/approvals/{second['approval_id']}/reject",
                                      json={"args_digest": second["args_digest"], "reason": "weight is right"})
        r["late_reject"] = approver.post(f"/v1/approvals/{first['approval_id']}/reject",
                                         json={"args_digest": first["args_digest"], "reason": "too late"})
        r["unknown"] = approver.post("/v1/approvals/apr-nope/approve", json={"args_digest": "0" * 64})
    with _client(scenario) as client:
        by_id = {cid: inst for cid, inst in ran["ids"].items() if inst in scenario["risky"]}
        views = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            views = {cid: client.get(f"/v1/cases/{cid}").json() for cid in by_id}
            if all(v["status"] == "escalated" for v in views.values()):
                break
            time.sleep(0.2)
    r["first"], r["second"], r["views"], r["by_id"] = first, second, views, by_id
    return r


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


def _client(scenario, role="submitter"):
    return httpx.Client(base_url=scenario["url"], timeout=30, headers=scenario["auth"].get(role, {}))


def test_cases_run_concurrently_to_their_gold_outcome(scenario, ran, platform):
    ids, views = ran["ids"], ran["views"]
    by_status = {}
    for cid, inst in ids.items():
        by_status.setdefault(views[cid]["status"], []).append(inst)
    assert by_status.get("resolved") == scenario["good"], views
    assert by_status.get("escalated") == scenario["suspect"]
    assert by_status.get("awaiting_approval") == scenario["risky"]
    for cid, view in views.items():
        if ids[cid] in scenario["risky"]:
            held = view["steps"][-1]
            assert held["tool"] == "tms_adjust_billed_weight" and held["verdict"] == "require_approval"
            assert not held["executed"] and held["approval_id"]
    for inst in scenario["good"]:
        assert _tms(platform, inst)["open_dispute_id"] is not None
    assert 0.5 not in ran["risky_billed"]  # the held high-risk writes had not run

    sql = ran["sql"]  # the traces as they were once the cases stopped
    assert dict(sql["statuses"]) == {"awaiting_approval": 2, "escalated": 1, "resolved": 3}
    assert sql["writes"] == [(3,)]
    assert sql["approvals"] == [("tms_adjust_billed_weight", "pending", None)] * 2
    assert sql["calls"] == [("model", 18), ("rule", 3)]  # each resolved case's finish followed its dispute


def _tms(platform, inst):
    return httpx.get(f"{platform.base_urls['tms']}/shipments/{inst.entities['shipment_id']}").json()


def test_approvals_need_an_approver_bound_to_the_previewed_action(scenario, decided, platform):
    r = decided
    assert len(r["pending"]) == 2
    assert all(p["preview"]["dry_run"] and p["risk"] == "high" for p in r["pending"])
    assert r["submitter_approves"].status_code == 403 and r["submitter_lists"].status_code == 403
    assert r["anonymous_lists"].status_code == 401 and r["anonymous_submits"].status_code in (401, 422)
    assert r["wrong_digest"].status_code == 409 and "differs" in r["wrong_digest"].json()["detail"]
    assert r["approver_in_body"].status_code == 422  # identity never comes from the body
    assert r["approved"].status_code == 200 and r["approved"].json()["approver"] == "approver"
    assert r["rejected"].status_code == 200 and r["rejected"].json()["status"] == "rejected"
    assert r["late_reject"].status_code == 409
    assert r["unknown"].status_code == 404
    first, second, views, by_id = r["first"], r["second"], r["views"], r["by_id"]
    outcome = {v["steps"][-1]["approval_id"]: v for v in views.values()}
    approved, rejected = outcome[first["approval_id"]], outcome[second["approval_id"]]
    assert approved["status"] == "escalated" and approved["steps"][-1]["executed"]
    assert _tms(platform, by_id[approved["case_id"]])["billed_weight_kg"] == 0.5
    assert rejected["status"] == "escalated" and not rejected["steps"][-1]["executed"]
    assert _tms(platform, by_id[rejected["case_id"]])["billed_weight_kg"] != 0.5

    scenario["system"].flush_traces()
    root = scenario["traces"]
    _, rows = query(root, "SELECT status, approver FROM approvals ORDER BY status")
    assert rows == [("approved", "approver"), ("rejected", "approver")]
    assert query(root, UNSUPERVISED_HIGH_RISK)[1] == [(0,)]
    _, rows = query(root, "SELECT count(*) FROM actions WHERE executed AND risk = 'high'")
    assert rows == [(1,)]  # the approved one ran, once


def test_bad_requests_get_clear_4xx(scenario):
    with _client(scenario) as client:
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


def test_traces_sql_cli_prints_csv(scenario, ran, capsys):
    scenario["system"].flush_traces()
    code = cli(["traces", "sql", "--traces", str(scenario["traces"]), "--csv",
                "SELECT exception_type, count(*) AS n FROM cases GROUP BY 1"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "exception_type,n" and lines[1].startswith("weight_mismatch,")
    assert cli(["traces", "sql", "--traces", str(scenario["traces"]), "SELECT nope FROM cases"]) == 1


def test_approvals_cli_lists_and_refuses_a_second_decision(scenario, decided, capsys, monkeypatch):
    token = scenario["auth"]["approver"]["Authorization"].split()[1]
    monkeypatch.setenv("OPSAGENT_TOKEN", token)
    assert cli(["approvals", "list", "--status", "all", "--url", scenario["url"]]) == 0
    out = capsys.readouterr().out
    assert out.count("tms_adjust_billed_weight") == 2 and "approved" in out and "rejected" in out
    approval_id = next(line.split()[0] for line in out.splitlines() if "approved" in line)
    # the approver's own decision sent again (its answer lost) is answered with the recorded one;
    # any other decision of it is refused by the API
    assert cli(["approvals", "approve", approval_id, "--url", scenario["url"]]) == 0
    assert "approved" in capsys.readouterr().out
    assert cli(["approvals", "reject", approval_id, "--reason", "changed my mind", "--url", scenario["url"]]) == 1
    assert "already approved" in capsys.readouterr().err
    monkeypatch.setenv("OPSAGENT_TOKEN", "oat_forged")
    assert cli(["approvals", "list", "--url", scenario["url"]]) == 1
    assert "401" in capsys.readouterr().err


def test_policy_reloads_without_a_restart_and_applies_at_once(scenario, platform):
    """Admins replace the policy over the API; the next decision uses it and records its version."""
    from importlib import resources

    original = resources.files("opsagent.policy").joinpath("default.yaml").read_text()
    tightened = original.replace("tms_open_weight_dispute:", "tms_open_weight_dispute_disabled:", 1)
    with _client(scenario, "auditor") as auditor:
        before = auditor.get("/v1/policy").json()["version"]
        assert auditor.put("/v1/policy", json={"yaml": tightened}).status_code == 403
    with _client(scenario, "admin") as admin:
        bad = admin.put("/v1/policy", json={"yaml": "classes: [not, a, mapping]"})
        assert bad.status_code == 422
        r = admin.put("/v1/policy", json={"yaml": tightened})
        assert r.status_code == 200 and r.json()["version"] != before
        assert admin.get("/v1/policy").json()["version"] == r.json()["version"]
        policy = scenario["system"].handles["policy"]
        try:
            allowed = ray.get(policy.allowed_tools.remote("weight_mismatch"))
            assert "tms_open_weight_dispute" not in allowed and "wms_get_shipment" in allowed
        finally:
            assert admin.put("/v1/policy", json={"yaml": original}).json()["version"] == before


def test_the_policy_actor_reports_and_guards_autonomy_modes(scenario):
    from opsagent.errors import AuthError
    from opsagent.policy.identity import Identity, Role

    policy = scenario["system"].handles["policy"]
    status = {s.exception_type: s for s in ray.get(policy.autonomy_status.remote())}
    promoted = status["weight_mismatch"]
    assert promoted.mode == "autonomous" and promoted.last_change.actor == "test-admin"
    assert status["damage_claim"].mode == "shadow" and status["damage_claim"].last_change.automatic
    approver = Identity(name="approver", roles=frozenset({Role.approver}))
    with pytest.raises(AuthError):
        ray.get(policy.set_mode.remote("damage_claim", "autonomous", approver, "I approve"))
    after = {s.exception_type: s.mode for s in ray.get(policy.autonomy_status.remote())}
    assert after["damage_claim"] == "shadow"


def test_the_watch_and_admin_routes_answer_over_serve(scenario, ran):
    """The route families the in-process API tests (tests/cluster/test_api*.py, uvicorn over local
    actors) cover in depth, once each through the real Serve deployment: timeline, overview,
    autonomy, tokens."""
    case_id = next(iter(ran["ids"]))
    scenario["system"].flush_traces()
    with _client(scenario, "auditor") as auditor:
        timeline = auditor.get(f"/v1/cases/{case_id}/timeline")
        assert timeline.status_code == 200 and {"status", "planner", "action"} <= {e["kind"] for e in timeline.json()}
        overview = auditor.get("/v1/overview").json()
        assert overview["cases"] >= 6 and overview["unsupervised_high_risk"] == 0
        modes = {s["exception_type"]: s["mode"] for s in auditor.get("/v1/autonomy").json()}
        assert modes["weight_mismatch"] == "autonomous" and modes["damage_claim"] == "shadow"
        assert auditor.get("/v1/tokens").status_code == 403
    with _client(scenario, "admin") as admin:
        issued = admin.post("/v1/tokens", json={"name": "serve-check", "roles": ["auditor"]})
        assert issued.status_code == 201, issued.text
        token = issued.json()["token"]
        assert "serve-check" in {t["name"] for t in admin.get("/v1/tokens").json()}
    with httpx.Client(base_url=scenario["url"], timeout=30, headers={"Authorization": f"Bearer {token}"}) as new:
        assert new.get("/v1/overview").status_code == 200 and new.get("/v1/tokens").status_code == 403
