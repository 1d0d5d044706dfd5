"""The approval watch over a real approval store, on a test clock: expiring once, expired once,
decisions it finds settled, and the pending count and oldest age it reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from opsagent.cluster.webhooks import ApprovalWatch, DeliveryLog, WebhookConfig, WebhookNotifier
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.identity import Identity, Role

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def _request(store, case_id, now):
    return store.request(case_id=case_id, exception_type="weight_mismatch", step=1, tool="t",
                         args={"n": case_id}, args_digest=case_id * 4, risk="high", reasons=["r"],
                         policy_version="v", preview=None, now=now)


def test_expiring_then_expired_once_each_and_the_gauges(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite", ttl=timedelta(hours=1))
    log = DeliveryLog(tmp_path / "w.sqlite")
    notifier = WebhookNotifier(WebhookConfig(url="http://127.0.0.1:9/x", secret="s"), "s", log)  # not started
    now = [T0]
    reports = []
    watch = ApprovalWatch(lambda: store.list("pending", now=now[0]), store.get, notifier.notify,
                          lambda pending, at: reports.append((len(pending), at)), warning_s=600,
                          clock=lambda: now[0])
    a = _request(store, "case-a", T0)
    watch.watch(a.approval_id)
    b = _request(store, "case-b", T0 + timedelta(minutes=10))
    watch.watch(b.approval_id)
    watch.tick()
    assert log.list() == [] and reports[-1] == (2, T0)

    now[0] = T0 + timedelta(minutes=51)  # a within 10 min of its expiry, b not
    watch.tick()
    watch.tick()
    assert [(d.event, d.approval_id) for d in log.list()] == [("approval.expiring", a.approval_id)]

    store.decide(b.approval_id, identity=Identity(name="alice", kind="human", roles=[Role.approver]),
                 approve=True, args_digest=b.args_digest, now=now[0])
    now[0] = T0 + timedelta(minutes=61)  # a expired (nobody decided)
    watch.tick()
    watch.tick()
    events = [(d.event, d.approval_id) for d in log.list()]
    assert events[0] == ("approval.expiring", a.approval_id)
    assert sorted(events[1:]) == [("approval.decided", b.approval_id), ("approval.expired", a.approval_id)]
    assert store.get(a.approval_id).status == "expired"
    assert reports[-1] == (0, now[0])


def test_an_approval_requested_during_a_tick_stays_watched(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite", ttl=timedelta(hours=1))
    sent = []
    late = {}

    def pending():
        rows = store.list("pending", now=T0)
        late.setdefault("c", _request(store, "case-c", T0))  # requested after the list was read
        watch.watch(late["c"].approval_id)
        return rows

    watch = ApprovalWatch(pending, store.get, lambda e, a: sent.append((e, a.approval_id)),
                          lambda p, at: None, clock=lambda: T0)
    watch.tick()
    store.withdraw("case-c", "withdrawn: the case ended escalated", now=T0)
    watch.tick()
    assert sent == [("approval.expired", late["c"].approval_id)]


def test_without_a_webhook_it_only_reports(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite", ttl=timedelta(hours=1))
    _request(store, "case-a", T0)
    reports = []
    ApprovalWatch(lambda: store.list("pending", now=T0 + timedelta(minutes=5)), store.get, None,
                  lambda pending, at: reports.append([p.case_id for p in pending]),
                  clock=lambda: T0).tick()
    assert reports == [["case-a"]]
