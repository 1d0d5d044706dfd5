"""Approval webhooks against a real local receiver: signed bodies, retries with backoff, the
delivery log, one notification per approval and event, delivery after a restart."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from opsagent.cluster.webhooks import (
    DELIVERY, SIGNATURE, TIMESTAMP, DeliveryLog, WebhookConfig, WebhookNotifier, signature, verify,
)
from opsagent.errors import ConfigError
from opsagent.policy.approvals import ApprovalStore
from tests.fakes.webhook_receiver import WebhookReceiver

SECRET = "test-webhook-secret"


@pytest.fixture
def approval(tmp_path):
    store = ApprovalStore(tmp_path / "approvals.sqlite", ttl=timedelta(hours=1))
    yield store.request(case_id="case-abc", exception_type="weight_mismatch", step=3,
                        tool="tms_adjust_billed_weight", args={"shipment_id": "SHP-1", "billed_weight_kg": 12.5},
                        args_digest="d" * 64, risk="high", reasons=["above the rebill limit"],
                        policy_version="v1", preview={"diff": {}})
    store.close()


def _config(url: str, **kw) -> WebhookConfig:
    settings = dict(secret=SECRET, console_url="https://ops.example.com/", backoff_s=0.05,
                    backoff_max_s=0.2, timeout_s=2)
    return WebhookConfig(url=url, **{**settings, **kw})


def _wait(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_delivery_is_signed_and_links_to_the_console(tmp_path, approval):
    with WebhookReceiver() as receiver:
        notifier = WebhookNotifier(_config(receiver.url), SECRET, DeliveryLog(tmp_path / "w.sqlite")).start()
        try:
            sent = notifier.notify("approval.requested", approval)
            assert sent is not None and _wait(lambda: len(receiver.ok()) == 1)
        finally:
            notifier.close()
    got = receiver.ok()[0]
    assert verify(SECRET, got.headers, got.body)
    assert not verify("another secret", got.headers, got.body)
    assert not verify(SECRET, got.headers, got.body.replace(b"SHP-1", b"SHP-2"))
    body = got.json
    assert body["event"] == "approval.requested" and body["id"] == got.headers[DELIVERY] == sent.delivery_id
    assert body["approval"]["approval_id"] == approval.approval_id
    assert body["approval"]["args"] == {"shipment_id": "SHP-1", "billed_weight_kg": 12.5}
    assert body["links"]["case"] == "https://ops.example.com/console/cases/case-abc"
    assert "preview" not in body["approval"]


def test_signature_is_over_timestamp_id_and_body_and_refuses_replays():
    body = b'{"a":1}'
    at = 1_800_000_000
    headers = {TIMESTAMP: str(at), DELIVERY: "whd-1", SIGNATURE: signature(SECRET, at, "whd-1", body)}
    assert verify(SECRET, headers, body, now=at + 10)
    assert not verify(SECRET, headers, body, now=at + 301)  # too old: a replay
    assert not verify(SECRET, {**headers, DELIVERY: "whd-2"}, body, now=at)
    assert not verify(SECRET, {**headers, TIMESTAMP: str(at + 1)}, body, now=at)
    assert not verify(SECRET, {DELIVERY: "whd-1"}, body, now=at)


def test_failures_are_retried_with_growing_pauses_and_logged(tmp_path, approval):
    log = DeliveryLog(tmp_path / "w.sqlite")
    with WebhookReceiver(fail_first=3) as receiver:
        notifier = WebhookNotifier(_config(receiver.url), SECRET, log).start()
        try:
            sent = notifier.notify("approval.decided", approval)
            assert _wait(lambda: len(receiver.ok()) == 1)
        finally:
            notifier.close()
    assert [r.status for r in receiver.requests] == [500, 500, 500, 204]
    assert len({r.headers[DELIVERY] for r in receiver.requests}) == 1  # one delivery, four attempts
    assert all(verify(SECRET, r.headers, r.body) for r in receiver.requests)  # each attempt signed
    assert _wait(lambda: log.get(sent.delivery_id).status == "delivered")
    attempts = log.attempts(sent.delivery_id)
    assert [a.status_code for a in attempts] == [500, 500, 500, 204]
    assert attempts[0].error.startswith("HTTP 500") and attempts[-1].error is None
    gaps = [(b.at - a.at).total_seconds() for a, b in zip(attempts, attempts[1:])]
    assert gaps[0] >= 0.05 * 0.9 and gaps[1] >= 0.1 * 0.9  # backoff 0.05 s, then doubled


def test_a_delivery_fails_after_max_attempts(tmp_path, approval):
    log = DeliveryLog(tmp_path / "w.sqlite")
    with WebhookReceiver(fail_first=100) as receiver:
        notifier = WebhookNotifier(_config(receiver.url, max_attempts=3), SECRET, log).start()
        try:
            sent = notifier.notify("approval.expired", approval)
            assert _wait(lambda: log.get(sent.delivery_id).status == "failed")
        finally:
            notifier.close()
    assert len(receiver.requests) == 3 and log.get(sent.delivery_id).attempts == 3
    assert log.list(status="failed")[0].last_status_code == 500


def test_one_notification_per_approval_and_event(tmp_path, approval):
    log = DeliveryLog(tmp_path / "w.sqlite")
    notifier = WebhookNotifier(_config("http://127.0.0.1:9/"), SECRET, log)  # not started
    assert notifier.notify("approval.requested", approval) is not None
    assert notifier.notify("approval.requested", approval) is None
    assert notifier.notify("approval.expiring", approval) is not None
    assert [d.event for d in log.list(approval_id=approval.approval_id)] == [
        "approval.requested", "approval.expiring"]
    assert log.open_approvals() == [approval.approval_id]
    assert WebhookNotifier(_config("http://127.0.0.1:9/", events=["approval.decided"]), SECRET,
                           log).notify("approval.expired", approval) is None  # not subscribed


def test_what_was_pending_at_a_stop_is_sent_after_the_restart(tmp_path, approval):
    path = tmp_path / "w.sqlite"
    WebhookNotifier(_config("http://127.0.0.1:9/"), SECRET, DeliveryLog(path)).notify(
        "approval.requested", approval)  # logged, never started: the process stopped
    with WebhookReceiver() as receiver:
        notifier = WebhookNotifier(_config(receiver.url), SECRET, DeliveryLog(path)).start()
        try:
            assert _wait(lambda: len(receiver.ok()) == 1)
        finally:
            notifier.close()
    assert receiver.ok()[0].json["approval"]["approval_id"] == approval.approval_id


def test_a_dead_receiver_costs_notify_nothing(tmp_path, approval):
    log = DeliveryLog(tmp_path / "w.sqlite")
    with WebhookReceiver(hang=True) as receiver:
        notifier = WebhookNotifier(_config(receiver.url, timeout_s=30), SECRET, log).start()
        try:
            notifier.notify("approval.requested", approval)
            assert _wait(lambda: receiver.in_flight == 1)  # the attempt hangs in the thread
            # while it hangs, notify still only writes the log and returns
            assert notifier.notify("approval.decided", approval) is not None
            assert receiver.in_flight == 1 and receiver.requests == []
        finally:
            receiver.release.set()
            notifier.close()


def test_the_secret_comes_from_the_config_or_the_environment(monkeypatch):
    config = WebhookConfig(url="https://hooks.example.com/x", secret_env="OPSAGENT_TEST_HOOK_SECRET")
    monkeypatch.delenv("OPSAGENT_TEST_HOOK_SECRET", raising=False)
    with pytest.raises(ConfigError, match="OPSAGENT_TEST_HOOK_SECRET"):
        config.resolve_secret()
    monkeypatch.setenv("OPSAGENT_TEST_HOOK_SECRET", "s3")
    assert config.resolve_secret() == "s3"
    with pytest.raises(ValueError, match="http"):
        WebhookConfig(url="ftp://x")
    with pytest.raises(ValueError, match="extra"):
        WebhookConfig(url="https://x", sekret="typo")
    assert json.loads(WebhookConfig(url="https://x", secret="s").model_dump_json())["secret"] == "**********"


def test_an_approvals_events_arrive_in_order_even_when_the_first_is_retried(tmp_path, approval):
    with WebhookReceiver(fail_first=2) as receiver:
        notifier = WebhookNotifier(_config(receiver.url, backoff_s=0.2), SECRET,
                                   DeliveryLog(tmp_path / "w.sqlite")).start()
        try:
            notifier.notify("approval.requested", approval)
            assert _wait(lambda: len(receiver.requests) == 1)  # failed once, waiting to retry
            notifier.notify("approval.decided", approval)
            assert _wait(lambda: len(receiver.ok()) == 2)
        finally:
            notifier.close()
    assert [r.json["event"] for r in receiver.requests] == [
        "approval.requested", "approval.requested", "approval.requested", "approval.decided"]


def test_the_readmes_verification_snippet_accepts_a_delivery_and_refuses_a_forgery():
    import re
    from pathlib import Path

    import opsagent
    from opsagent.cluster.webhooks import signed_headers

    readme = (Path(opsagent.__file__).resolve().parent / "README.md").read_text()
    snippet = re.search(r"```python\n(import hashlib, hmac, time\n.*?)```", readme, re.S)
    assert snippet, "README's webhook verification snippet is missing"
    namespace: dict = {}
    exec(snippet.group(1), namespace)  # noqa: S102 - our own README
    raw = b'{"event":"approval.requested"}'
    headers = signed_headers(SECRET, "whd-1", "approval.requested", raw)
    assert namespace["verified"](SECRET, headers, raw)
    assert not namespace["verified"](SECRET, headers, raw + b" ")
    assert not namespace["verified"](SECRET, signed_headers(SECRET, "whd-1", "e", raw, now=1_000_000), raw)
