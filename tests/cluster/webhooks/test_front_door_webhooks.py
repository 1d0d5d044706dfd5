"""Approval webhooks from the policy actor behind the real front door (in process, no Ray): a held
case notifies `approval.requested` and pauses even while the receiver hangs; the decision is
notified; every delivery is signed and links to the case's console page."""

from __future__ import annotations

import time

import httpx
import pytest

from opsagent.cluster.webhooks import WebhookConfig, verify
from tests.fakes.webhook_receiver import WebhookReceiver

SECRET = "front-door-secret"


def _wait(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"{what} not reached in {timeout} s")


def test_a_hanging_receiver_never_holds_a_case_and_gets_every_event_signed(platform, tmp_path):
    from opsagent.agents.engines import ScriptedEngine
    from opsagent.agents.playbooks.model import builtin_playbooks
    from opsagent.tools.platform import inject_weight_mismatch
    from tests.fakes.held_planner import held_then_decided
    from tests.fakes.local_actors import local_front_door

    risky = inject_weight_mismatch(platform, count=1, seed=7311, suspect_share=0.0)[0]
    engine = ScriptedEngine([held_then_decided({risky.entities["shipment_id"]})] * 4)  # read, read, held write, finish
    with WebhookReceiver(hang=True) as receiver:
        hook = WebhookConfig(url=receiver.url, console_url="https://ops.example.com", timeout_s=60,
                             backoff_s=0.05)
        with local_front_door(platform.registry(), tmp_path, engine=engine,
                              playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]},
                              modes={"weight_mismatch": "autonomous"},
                              policy_options=dict(webhook=hook, webhook_secret=SECRET)) as door:
            auth = lambda role: httpx.Client(base_url=door.url, timeout=30, headers=door.headers(role))  # noqa: E731
            with auth("submitter") as client:
                case_id = client.post("/v1/exceptions", json={
                    "exception_type": risky.exception_type, "description": risky.description,
                    "entities": risky.entities}).json()["case_id"]
                view = _wait(lambda: (v := client.get(f"/v1/cases/{case_id}").json())["status"]
                             == "awaiting_approval" and v, what="awaiting_approval")
            # the case paused while the receiver still holds the notification unanswered
            assert receiver.in_flight == 1 and receiver.requests == []
            approval_id = view["steps"][-1]["approval_id"]
            with auth("approver") as approver:
                digest = approver.get(f"/v1/approvals/{approval_id}").json()["approval"]["args_digest"]
                assert approver.post(f"/v1/approvals/{approval_id}/approve",
                                     json={"args_digest": digest}).status_code == 200
            with auth("auditor") as auditor:
                _wait(lambda: auditor.get(f"/v1/cases/{case_id}").json()["status"] == "resolved",
                      what="resolved")
            receiver.release.set()  # the receiver answers again: both events arrive
            got = _wait(lambda: len(receiver.ok()) >= 2 and receiver.ok(), what="two deliveries")
            log = door.actors["policy"].instance.webhook_deliveries(approval_id)
    assert [r.json["event"] for r in got] == ["approval.requested", "approval.decided"]
    assert all(verify(SECRET, r.headers, r.body) for r in got)
    assert got[0].json["links"]["case"] == f"https://ops.example.com/console/cases/{case_id}"
    assert got[1].json["approval"]["status"] == "approved" and got[1].json["approval"]["approver"] == "approver"
    assert [(d.event, d.status) for d in log] == [("approval.requested", "delivered"),
                                                  ("approval.decided", "delivered")]
