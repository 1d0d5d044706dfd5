"""The /v1 API in process (real app, real actor classes, no Ray): idempotent submission, lists,
timelines, cancel, approvals with their context, the role matrix, the access log."""

from __future__ import annotations

import json
import time

import httpx
import pytest

FINAL_OR_HELD = {"resolved", "escalated", "failed", "proposed", "awaiting_approval"}


def _report(inst, **change):
    return {"exception_type": inst.exception_type, "description": inst.description,
            "entities": inst.entities, **change}


def _client(door, role="submitter"):
    return httpx.Client(base_url=door.url, timeout=30, headers=door.headers(role))


def _wait(door, case_id, statuses=FINAL_OR_HELD, timeout=60):
    deadline = time.monotonic() + timeout
    with _client(door, "auditor") as client:
        while time.monotonic() < deadline:
            view = client.get(f"/v1/cases/{case_id}").json()
            if view["status"] in statuses:
                return view
            time.sleep(0.05)
    pytest.fail(f"{case_id} not in {statuses} within {timeout} s: {view}")


@pytest.fixture(scope="module")
def cases(front_door):
    """Two cases of `submitter` (one resolved, one held for approval) and one of `submitter2`."""
    with _client(front_door) as mine, _client(front_door, "submitter2") as theirs:
        resolved = mine.post("/v1/exceptions", json=_report(front_door.good[0])).json()["case_id"]
        held = mine.post("/v1/exceptions", json=_report(front_door.risky[0])).json()["case_id"]
        other = theirs.post("/v1/exceptions", json=_report(front_door.good[1])).json()["case_id"]
    views = {cid: _wait(front_door, cid) for cid in (resolved, held, other)}
    assert views[resolved]["status"] == "resolved" and views[other]["status"] == "resolved"
    assert views[held]["status"] == "awaiting_approval"
    return {"resolved": resolved, "held": held, "other": other}


def test_a_retried_submission_returns_the_same_case(front_door):
    inst = front_door.good[2]
    with _client(front_door) as client:
        first = client.post("/v1/exceptions", json=_report(inst), headers={"Idempotency-Key": "ops-42"})
        again = client.post("/v1/exceptions", json=_report(inst), headers={"Idempotency-Key": "ops-42"})
        assert first.status_code == 202 and first.json()["created"] is True
        assert again.status_code == 200 and again.json()["created"] is False
        assert again.json()["case_id"] == first.json()["case_id"]
        # the key in the body is the same key
        body_key = client.post("/v1/exceptions", json=_report(inst, idempotency_key="ops-42"))
        assert body_key.status_code == 200 and body_key.json()["case_id"] == first.json()["case_id"]
        other = client.post("/v1/exceptions", json=_report(inst, description="something else"),
                            headers={"Idempotency-Key": "ops-42"})
        assert other.status_code == 409 and "different exception" in other.json()["error"]
        clash = client.post("/v1/exceptions", json=_report(inst, idempotency_key="a"),
                            headers={"Idempotency-Key": "b"})
        assert clash.status_code == 409 and "differ" in clash.json()["error"]
        bad = client.post("/v1/exceptions", json=_report(inst), headers={"Idempotency-Key": "no spaces"})
        assert bad.status_code == 422
    with _client(front_door, "submitter2") as someone_else:  # keys are per submitter
        theirs = someone_else.post("/v1/exceptions", json=_report(inst), headers={"Idempotency-Key": "ops-42"})
        assert theirs.status_code == 202 and theirs.json()["case_id"] != first.json()["case_id"]
    _wait(front_door, first.json()["case_id"])
    _wait(front_door, theirs.json()["case_id"])


def test_lists_filter_and_page(front_door, cases):
    with _client(front_door, "auditor") as client:
        everything = client.get("/v1/cases").json()
        assert everything["total"] >= 3 and everything["next_offset"] is None
        assert {cases["resolved"], cases["held"], cases["other"]} <= {c["case_id"] for c in everything["items"]}
        received = [c["received_at"] for c in everything["items"]]
        assert received == sorted(received, reverse=True)  # newest first
        # the held case's status now (another test may have decided its approval already)
        status = client.get(f"/v1/cases/{cases['held']}").json()["status"]
        held = client.get("/v1/cases", params={"status": status}).json()
        assert cases["held"] in {c["case_id"] for c in held["items"]}
        assert all(c["status"] == status for c in held["items"])
        assert client.get("/v1/cases", params={"exception_type": "missed_pickup"}).json()["total"] == 0
        first = client.get("/v1/cases", params={"limit": 1}).json()
        assert len(first["items"]) == 1 and first["next_offset"] == 1
        second = client.get("/v1/cases", params={"limit": 1, "offset": 1}).json()
        assert second["items"][0]["case_id"] != first["items"][0]["case_id"]
        exceptions = client.get("/v1/exceptions", params={"submitted_by": "submitter2"}).json()
        assert exceptions["items"] and all(e["submitted_by"] == "submitter2" for e in exceptions["items"])
        one = client.get(f"/v1/exceptions/{cases['held']}").json()
        assert one["report"]["entities"] == front_door.risky[0].entities
        for bad in ({"limit": 0}, {"limit": 201}, {"offset": -1}, {"status": "nope"},
                    {"exception_type": "Not A Class"}):
            r = client.get("/v1/cases", params=bad)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["error"].startswith("invalid request")


def test_a_case_timeline_comes_from_the_traces(front_door, cases):
    with _client(front_door, "auditor") as client:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            timeline = client.get(f"/v1/cases/{cases['resolved']}/timeline").json()
            if any(e["kind"] == "status" and e["summary"].startswith("resolved") for e in timeline):
                break
            time.sleep(0.1)
        kinds = [e["kind"] for e in timeline]
        assert kinds[0] == "status" and {"planner", "action"} <= set(kinds)
        assert [e["ts"] for e in timeline] == sorted(e["ts"] for e in timeline)
        assert client.get("/v1/cases/case-000000000000/timeline").status_code == 404


def test_each_role_reads_only_what_it_should(front_door, cases):
    """The role matrix: who may call what, and which cases each role can see."""
    # the held step's approval (decided or not: test_an_approver_sees... may have run first)
    held_approval = next(s["approval_id"] for s in _wait(front_door, cases["held"])["steps"] if s["approval_id"])
    mine, held, theirs = cases["resolved"], cases["held"], cases["other"]
    expected = [  # (method, path, body, {role: status})
        ("GET", f"/v1/cases/{mine}", None, dict(submitter=200, submitter2=404, approver=404, auditor=200, admin=200)),
        ("GET", f"/v1/cases/{held}", None, dict(submitter=200, submitter2=404, approver=200, auditor=200, admin=200)),
        ("GET", f"/v1/cases/{theirs}/timeline", None, dict(submitter=404, submitter2=200, approver=404, auditor=200)),
        ("GET", f"/v1/exceptions/{mine}", None, dict(submitter=200, submitter2=404, approver=404, auditor=200)),
        ("GET", "/v1/approvals", None, dict(submitter=403, approver=200, auditor=200, admin=200)),
        ("GET", f"/v1/approvals/{held_approval}", None, dict(submitter=403, approver=200, auditor=200)),
        ("GET", "/v1/overview", None, dict(submitter=403, approver=200, auditor=200, admin=200)),
        ("GET", "/v1/policy", None, dict(submitter=403, approver=200, auditor=200, admin=200)),
        ("PUT", "/v1/policy", {"yaml": "x: 1"}, dict(submitter=403, approver=403, auditor=403, admin=422)),
        ("POST", "/v1/exceptions", _report(front_door.risky[3], description="probe"), dict(approver=403, auditor=403)),
        ("POST", f"/v1/approvals/{held_approval}/approve", {"args_digest": "0" * 64}, dict(submitter=403, auditor=403, approver=409)),
        ("POST", f"/v1/cases/{mine}/cancel", {}, dict(submitter2=404, approver=403, auditor=403, submitter=409)),
    ]
    for method, path, body, by_role in expected:
        for role, status in by_role.items():
            with _client(front_door, role) as client:
                r = client.request(method, path, json=body)
            assert r.status_code == status, (role, method, path, r.status_code, r.text)
        with _client(front_door, None) as anonymous:
            r = anonymous.request(method, path, json=body)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, path)
    with httpx.Client(base_url=front_door.url, headers={"Authorization": "Bearer oat_forged"}) as forged:
        assert forged.get("/v1/cases").status_code == 401
    # lists are filtered the same way
    listed = {}
    for role in ("submitter", "submitter2", "approver", "auditor"):
        with _client(front_door, role) as client:
            listed[role] = {c["case_id"] for c in client.get("/v1/cases", params={"limit": 200}).json()["items"]}
    assert mine in listed["submitter"] and held in listed["submitter"] and theirs not in listed["submitter"]
    assert listed["submitter2"].isdisjoint({mine, held}) and theirs in listed["submitter2"]
    assert held in listed["approver"] and mine not in listed["approver"] and theirs not in listed["approver"]
    assert {mine, held, theirs} <= listed["auditor"]


def test_an_approver_sees_the_context_and_decides_bound_to_the_digest(front_door, cases):
    held = _wait(front_door, cases["held"])
    approval_id = held["steps"][-1]["approval_id"]
    with _client(front_door, "approver") as client:
        context = client.get(f"/v1/approvals/{approval_id}").json()
        assert context["decidable"] and context["case_status"] == "awaiting_approval"
        assert context["description"] == front_door.risky[0].description
        assert context["evidence"] == {"scale_check": "passed"}
        assert context["reads"] == ["wms_get_shipment", "tms_get_shipment"]
        preview = context["approval"]["preview"]
        assert preview["dry_run"] and preview["diff"]["after"]["billed_weight_kg"] != preview["diff"]["before"]["billed_weight_kg"]
        digest = context["approval"]["args_digest"]
        r = client.post(f"/v1/approvals/{approval_id}/reject", json={"args_digest": digest})
        assert r.status_code == 422 and "reason" in r.json()["error"]
        r = client.post(f"/v1/approvals/{approval_id}/approve", json={"args_digest": "f" * 64})
        assert r.status_code == 409 and "differs" in r.json()["error"]
        policy = front_door.actors["policy"].instance
        notify, announced = policy._notify, []
        policy._notify = lambda event, approval: (announced.append(event), notify(event, approval))
        try:
            r = client.post(f"/v1/approvals/{approval_id}/approve", json={"args_digest": digest})
            assert r.status_code == 200 and r.json()["approver"] == "approver"
            # the answer was lost and the approver sends it again: the recorded decision, once
            again = client.post(f"/v1/approvals/{approval_id}/approve", json={"args_digest": digest})
            assert again.status_code == 200 and again.json() == r.json()
        finally:
            policy._notify = notify
        assert announced == ["approval.decided"]  # the retry is not a second decision event
        r2 = client.post(f"/v1/approvals/{approval_id}/reject", json={"args_digest": digest, "reason": "no"})
        assert r2.status_code == 409 and "already approved" in r2.json()["error"]
        assert client.get("/v1/approvals/apr-unknown").status_code == 404
    with _client(front_door, "admin") as other:  # another approver: the request is decided
        r3 = other.post(f"/v1/approvals/{approval_id}/approve", json={"args_digest": digest})
        assert r3.status_code == 409 and "already approved" in r3.json()["error"]
    view = _wait(front_door, cases["held"], statuses={"resolved", "escalated", "failed"})
    assert view["status"] == "resolved" and view["steps"][-1]["executed"]


def test_cancel_stops_a_held_case_and_its_approval(front_door):
    with _client(front_door) as client:
        case_id = client.post("/v1/exceptions", json=_report(front_door.risky[1])).json()["case_id"]
        held = _wait(front_door, case_id)
        assert held["status"] == "awaiting_approval"
        r = client.post(f"/v1/cases/{case_id}/cancel", json={"reason": "customer withdrew the claim"})
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "escalated"
        assert r.json()["reason"] == "cancelled by submitter: customer withdrew the claim"
        assert client.post(f"/v1/cases/{case_id}/cancel", json={}).status_code == 409
        assert client.post(f"/v1/cases/{case_id}/cancel", json={"reason": "x" * 2001}).status_code == 422
    approval_id = held["steps"][-1]["approval_id"]
    with _client(front_door, "approver") as approver:
        context = approver.get(f"/v1/approvals/{approval_id}").json()
        assert not context["decidable"]
        withdrawn = "withdrawn: the case ended escalated"  # the cancelled case withdrew it
        assert (context["approval"]["status"], context["approval"]["reason"]) == ("expired", withdrawn)
        assert approval_id not in [a["approval_id"] for a in approver.get(
            "/v1/approvals", params={"status": "pending"}).json()]
        r = approver.post(f"/v1/approvals/{approval_id}/approve",
                          json={"args_digest": context["approval"]["args_digest"]})
        assert r.status_code == 409 and withdrawn in r.json()["error"]
    assert _wait(front_door, case_id)["steps"][-1]["executed"] is False


def test_a_pending_approval_its_case_does_not_wait_for_cannot_be_decided(front_door):
    with _client(front_door) as client:  # e.g. the policy was out of reach when the case ended
        case_id = client.post("/v1/exceptions", json=_report(front_door.good[2])).json()["case_id"]
        _wait(front_door, case_id)  # whatever its end, it never asks for this approval
    approvals = front_door.actors["policy"].instance._service.approvals
    stray = approvals.request(
        case_id=case_id, exception_type="weight_mismatch", step=9, tool="tms_adjust_billed_weight",
        args={}, args_digest="d" * 64, risk="high", reasons=[], policy_version="v", preview=None)
    try:
        with _client(front_door, "approver") as approver:
            r = approver.post(f"/v1/approvals/{stray.approval_id}/approve", json={"args_digest": "d" * 64})
            assert r.status_code == 409 and "nothing waits" in r.json()["error"]
    finally:
        approvals.withdraw(case_id, "test over")  # the module's other tests count pending ones


def test_bad_bodies_get_clear_4xx(front_door):
    inst = front_door.good[0]
    with _client(front_door) as client:
        r = client.post("/v1/exceptions", json=_report(inst, description="x" * 4001))
        assert r.status_code == 422 and "description" in r.json()["error"]
        r = client.post("/v1/exceptions", json=_report(inst, description="x" * 70_000))
        assert r.status_code == 413 and "limit" in r.json()["error"]

        def chunks():  # no Content-Length: the limit applies as the body streams in
            for _ in range(80):
                yield b"x" * 1024

        r = client.post("/v1/exceptions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        r = client.post("/v1/exceptions", json=_report(inst, approver="ceo"))
        assert r.status_code == 422 and "approver" in r.json()["error"]
        r = client.post("/v1/exceptions", content=b"[1,2", headers={"content-type": "application/json"})
        assert r.status_code == 422


def test_openapi_document_and_health(front_door):
    with httpx.Client(base_url=front_door.url) as client:
        doc = client.get("/openapi.json").json()
        assert client.get("/v1/health").json()["status"] == "ok"
    assert {"/v1/exceptions", "/v1/cases", "/v1/cases/{case_id}/timeline", "/v1/cases/{case_id}/cancel",
            "/v1/approvals/{approval_id}/approve", "/v1/overview", "/v1/health"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert not any(p.startswith("/console") for p in doc["paths"])


def test_every_request_is_logged_with_its_identity(front_door, cases):
    with _client(front_door, "auditor") as client:
        client.get(f"/v1/cases/{cases['other']}", headers={"X-Request-Id": "trace-me-1"})
    with _client(front_door, None) as anonymous:
        anonymous.get("/v1/cases", headers={"X-Request-Id": "trace-me-2"})
    records = [json.loads(line) for line in (front_door.state / "access.jsonl").read_text().splitlines()]
    by_id = {r["request_id"]: r for r in records}
    assert by_id["trace-me-1"]["identity"] == "auditor" and by_id["trace-me-1"]["roles"] == ["auditor"]
    assert by_id["trace-me-1"]["status"] == 200 and by_id["trace-me-1"]["path"] == f"/v1/cases/{cases['other']}"
    assert by_id["trace-me-2"]["identity"] is None and by_id["trace-me-2"]["status"] == 401
    assert all("oat_" not in json.dumps(r) for r in records)  # no token is ever logged


def test_autonomy_modes_are_read_by_watchers_and_set_by_admins(front_door, cases):
    with _client(front_door, "auditor") as auditor:
        classes = {c["exception_type"]: c for c in auditor.get("/v1/autonomy").json()}
        assert classes["weight_mismatch"]["mode"] == "autonomous"
        assert classes["missed_pickup"]["mode"] == "shadow"  # the shipped policy's initial mode
        assert {"evidence", "gate", "eligible", "why"} <= set(classes["missed_pickup"])
        r = auditor.put("/v1/autonomy/missed_pickup", json={"mode": "supervised", "reason": "x"})
        assert r.status_code == 403
    with _client(front_door, "submitter") as submitter:
        assert submitter.get("/v1/autonomy").status_code == 403
    with _client(front_door, "admin") as admin:
        r = admin.put("/v1/autonomy/missed_pickup", json={"mode": "supervised", "reason": "ops lead sign-off"})
        assert r.status_code == 409 and "gates do not allow supervised" in r.json()["error"]  # no evidence
        r = admin.put("/v1/autonomy/missed_pickup", json={"mode": "supervised", "reason": "ops lead sign-off",
                                                          "override": True})
        assert r.status_code == 200, r.text
        assert r.json()["actor"] == "admin" and r.json()["from_mode"] == "shadow"
        assert admin.put("/v1/autonomy/no_such_class", json={"mode": "shadow", "reason": "x"}).status_code == 404
        assert admin.put("/v1/autonomy/missed_pickup", json={"mode": "reckless", "reason": "x"}).status_code == 422
        assert admin.put("/v1/autonomy/missed_pickup", json={"mode": "shadow", "reason": " "}).status_code == 422
        now = {c["exception_type"]: c for c in admin.get("/v1/autonomy").json()}
        assert now["missed_pickup"]["mode"] == "supervised"
        assert now["missed_pickup"]["last_change"]["reason"].startswith("ops lead sign-off [override of the gate")
        # the case list filters by the mode a class is in now
        autonomous = admin.get("/v1/cases", params={"mode": "autonomous", "limit": 200}).json()
        assert cases["resolved"] in {c["case_id"] for c in autonomous["items"]}
        assert admin.get("/v1/cases", params={"mode": "supervised"}).json()["total"] == 0
        admin.put("/v1/autonomy/missed_pickup", json={"mode": "shadow", "reason": "back to shadow"})


def test_unknown_query_parameters_are_refused(front_door):
    with _client(front_door, "auditor") as client:
        r = client.get("/v1/cases", params={"stauts": "resolved"})
        assert r.status_code == 422 and "'stauts'" in r.json()["error"] and "status" in r.json()["error"]
        assert client.get("/v1/overview", params={"x": "1"}).status_code == 422


def test_a_single_valued_query_parameter_given_twice_is_refused_a_list_one_may_repeat(front_door):
    with _client(front_door, "auditor") as client:
        r = client.get("/v1/cases", params=[("submitted_by", "a"), ("submitted_by", "b")])
        assert r.status_code == 422 and "given more than once: 'submitted_by'" in r.json()["error"]
        ids = client.get("/v1/cases", params={"limit": 2}).json()["items"]
        wanted = [c["case_id"] for c in ids]
        listed = client.get("/v1/cases", params=[("case_id", c) for c in wanted])
        assert listed.status_code == 200 and {c["case_id"] for c in listed.json()["items"]} == set(wanted)
