"""Approvals: durable, bound to the previewed action's digest, decided only by human approvers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from opsagent.errors import ApprovalError, AuthError
from opsagent.policy.approvals import ApprovalStatus, ApprovalStore
from opsagent.policy.identity import AGENT, Identity, Role
from opsagent.policy.records import args_digest

ARGS = {"shipment_id": "SHP-1", "billed_weight_kg": 2.0, "reason": "rebill"}
DIGEST = args_digest("tms_adjust_billed_weight", ARGS)
ALICE = Identity(name="alice", roles=frozenset({Role.approver}))
SUBMITTER = Identity(name="sam", roles=frozenset({Role.submitter}))


def _request(store, step=3, args=ARGS, now=None):
    return store.request(case_id="case-1", exception_type="weight_mismatch", step=step,
                         tool="tms_adjust_billed_weight", args=args,
                         args_digest=args_digest("tms_adjust_billed_weight", args), risk="high",
                         reasons=["irreversible"], policy_version="v1",
                         preview={"diff": {"before": {"billed_weight_kg": 6.0}}}, now=now)


def test_request_is_idempotent_per_action_and_durable(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite")
    first = _request(store)
    assert _request(store).approval_id == first.approval_id
    assert _request(store, step=4).approval_id != first.approval_id
    reopened = ApprovalStore(tmp_path / "a.sqlite")
    again = reopened.get(first.approval_id)
    assert again.status == ApprovalStatus.pending and again.preview == first.preview
    assert [r.approval_id for r in reopened.list("pending")] == [first.approval_id, _request(store, 4).approval_id]


def test_approve_binds_approver_and_digest(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite")
    req = _request(store)
    assert store.approved("case-1", 3, DIGEST) is None
    done = store.decide(req.approval_id, identity=ALICE, approve=True, args_digest=DIGEST)
    assert done.status == ApprovalStatus.approved and done.approver == "alice" and done.decided_at
    assert store.approved("case-1", 3, DIGEST).approval_id == req.approval_id
    other = args_digest("tms_adjust_billed_weight", {**ARGS, "billed_weight_kg": 0.1})
    assert store.approved("case-1", 3, other) is None
    with pytest.raises(ApprovalError, match="already approved"):
        store.decide(req.approval_id, identity=ALICE, approve=False, args_digest=DIGEST, reason="no")


def test_the_same_decision_sent_again_gets_the_recorded_one_and_any_other_is_refused(tmp_path):
    """A decision whose answer was lost is retried: the same approver's same decision is answered
    with the decision recorded first (not a second one); another decision or approver is refused."""
    store = ApprovalStore(tmp_path / "a.sqlite")
    req = _request(store)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    first = store.decide(req.approval_id, identity=ALICE, approve=False, args_digest=DIGEST,
                         reason="weight ticket missing", now=t0)
    again = store.decide(req.approval_id, identity=ALICE, approve=False, args_digest=DIGEST,
                         reason="weight ticket missing", now=t0 + timedelta(minutes=1))
    assert again == first and again.decided_at == first.decided_at  # the record, not a new decision
    bob = Identity(name="bob", roles=frozenset({Role.approver}))
    other = args_digest("tms_adjust_billed_weight", {**ARGS, "billed_weight_kg": 0.5})
    for who, approve, digest, reason in [
            (ALICE, True, DIGEST, None),  # the other decision
            (bob, False, DIGEST, "weight ticket missing"),  # another approver
            (ALICE, False, other, "weight ticket missing"),  # another action
            (ALICE, False, DIGEST, "another reason")]:
        with pytest.raises(ApprovalError, match="already rejected"):
            store.decide(req.approval_id, identity=who, approve=approve, args_digest=digest, reason=reason)
    assert store.get(req.approval_id) == first
    approved = store.decide(_request(store, step=4).approval_id, identity=ALICE, approve=True,
                            args_digest=args_digest("tms_adjust_billed_weight", ARGS))
    assert store.decide(approved.approval_id, identity=ALICE, approve=True,
                        args_digest=approved.args_digest) == approved


@pytest.mark.parametrize("identity,error", [
    (AGENT, ApprovalError), (SUBMITTER, AuthError),
    (Identity(name="bot", roles=frozenset({Role.approver}), kind="agent"), ApprovalError),
])
def test_agents_and_non_approvers_cannot_decide(tmp_path, identity, error):
    store = ApprovalStore(tmp_path / "a.sqlite")
    req = _request(store)
    with pytest.raises(error):
        store.decide(req.approval_id, identity=identity, approve=True, args_digest=DIGEST)
    assert store.get(req.approval_id).status == ApprovalStatus.pending


def test_a_changed_action_needs_a_new_approval(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite")
    req = _request(store)
    changed = args_digest("tms_adjust_billed_weight", {**ARGS, "billed_weight_kg": 0.5})
    with pytest.raises(ApprovalError, match="differs from the one previewed"):
        store.decide(req.approval_id, identity=ALICE, approve=True, args_digest=changed)
    assert store.get(req.approval_id).status == ApprovalStatus.pending


def test_expired_requests_cannot_be_approved(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite", ttl=timedelta(minutes=5))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    req = _request(store, now=t0)
    with pytest.raises(ApprovalError, match="expired"):
        store.decide(req.approval_id, identity=ALICE, approve=True, args_digest=DIGEST,
                     now=t0 + timedelta(minutes=6))
    assert store.get(req.approval_id).status == ApprovalStatus.expired


def test_rejection_needs_a_reason_and_unknown_ids_fail(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite")
    req = _request(store)
    with pytest.raises(ApprovalError, match="reason"):
        store.decide(req.approval_id, identity=ALICE, approve=False, args_digest=DIGEST, reason=" ")
    done = store.decide(req.approval_id, identity=ALICE, approve=False, args_digest=DIGEST,
                        reason="billed weight is right")
    assert done.status == ApprovalStatus.rejected and done.reason == "billed weight is right"
    with pytest.raises(ApprovalError, match="no approval"):
        store.get("apr-nope")


OTHER = {**ARGS, "billed_weight_kg": 3.0}
OTHER_DIGEST = args_digest("tms_adjust_billed_weight", OTHER)


def test_a_new_request_for_the_step_supersedes_the_pending_one(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite")
    first = _request(store)  # the case manager died before recording it; the step was re-planned
    second = _request(store, args=OTHER)
    old = store.get(first.approval_id)
    assert old.status == ApprovalStatus.expired and old.reason == f"superseded by {second.approval_id}"
    assert old.decided_at is not None and old.approver is None
    assert second.status == ApprovalStatus.pending and second.supersedes == [first.approval_id]
    assert [a.approval_id for a in store.list("pending")] == [second.approval_id]
    with pytest.raises(ApprovalError, match=f"already expired \\(superseded by {second.approval_id}\\)"):
        store.decide(first.approval_id, identity=ALICE, approve=True, args_digest=DIGEST)
    assert store.approved("case-1", 3, DIGEST) is None
    done = store.decide(second.approval_id, identity=ALICE, approve=True, args_digest=OTHER_DIGEST)
    assert done.status == ApprovalStatus.approved
    assert _request(store, args=OTHER).approval_id == second.approval_id  # still one request per action


def test_superseding_spares_other_steps_cases_and_decided_requests(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite")
    step_two = _request(store, step=2)
    approved = _request(store)
    store.decide(approved.approval_id, identity=ALICE, approve=True, args_digest=DIGEST)
    other_case = store.request(case_id="case-2", exception_type="weight_mismatch", step=3,
                               tool="tms_adjust_billed_weight", args=ARGS, args_digest=DIGEST,
                               risk="high", reasons=[], policy_version="v1", preview=None)
    newer = _request(store, args=OTHER)
    assert newer.supersedes == []
    assert store.get(step_two.approval_id).status == ApprovalStatus.pending
    assert store.get(approved.approval_id).status == ApprovalStatus.approved
    assert store.get(other_case.approval_id).status == ApprovalStatus.pending


def test_withdrawing_a_cases_approvals_expires_only_its_pending_ones(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite")
    rejected = _request(store, step=2)
    store.decide(rejected.approval_id, identity=ALICE, approve=False, args_digest=DIGEST, reason="no")
    pending = _request(store)
    elsewhere = store.request(case_id="case-2", exception_type="weight_mismatch", step=3,
                              tool="tms_adjust_billed_weight", args=ARGS, args_digest=DIGEST,
                              risk="high", reasons=[], policy_version="v1", preview=None)
    withdrawn = store.withdraw("case-1", "withdrawn: the case ended escalated")
    assert [(a.approval_id, a.status, a.reason) for a in withdrawn] == [
        (pending.approval_id, ApprovalStatus.expired, "withdrawn: the case ended escalated")]
    assert store.get(rejected.approval_id).status == ApprovalStatus.rejected
    assert store.get(elsewhere.approval_id).status == ApprovalStatus.pending
    with pytest.raises(ApprovalError, match="withdrawn: the case ended escalated"):
        store.decide(pending.approval_id, identity=ALICE, approve=True, args_digest=DIGEST)
    assert store.withdraw("case-1", "again") == [] and store.withdraw("case-nope", "x") == []


def test_an_approvals_file_from_before_the_state_layer_is_refused_not_overwritten(tmp_path):
    import sqlite3

    from opsagent.errors import StateError

    path = tmp_path / "a.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE approvals (approval_id TEXT PRIMARY KEY, status TEXT)")
    old.execute("INSERT INTO approvals VALUES ('apr-old', 'pending')")
    old.commit()
    old.close()
    with pytest.raises(StateError, match="no schema version"):
        ApprovalStore(path)
    assert sqlite3.connect(path).execute("SELECT * FROM approvals").fetchall() == [("apr-old", "pending")]


def test_the_submitter_named_with_a_request_may_never_decide_it(tmp_path):
    """`submitted_by` on a request: that person is refused even holding the approver role
    (separation of duties); another approver decides, and the record survives a reopen."""
    store = ApprovalStore(tmp_path / "a.sqlite")
    pending = store.request(case_id="case-9", exception_type="weight_mismatch", step=3,
                            tool="tms_adjust_billed_weight", args=ARGS, args_digest=DIGEST, risk="high",
                            reasons=["irreversible"], policy_version="v1", preview={}, submitted_by="alice")
    reopened = ApprovalStore(tmp_path / "a.sqlite")
    for either in (store, reopened):
        with pytest.raises(ApprovalError, match="separation of duties"):
            either.decide(pending.approval_id, identity=ALICE, approve=True, args_digest=DIGEST)
    assert reopened.get(pending.approval_id).status == ApprovalStatus.pending
    bob = Identity(name="bob", roles=frozenset({Role.approver}))
    assert reopened.decide(pending.approval_id, identity=bob, approve=True, args_digest=DIGEST).approver == "bob"


def test_a_withdrawal_is_stamped_in_utc(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite")
    _request(store)
    before = datetime.now(UTC)
    (withdrawn,) = store.withdraw("case-1", "the case ended")
    assert withdrawn.decided_at is not None and withdrawn.decided_at.utcoffset() == timedelta(0)
    assert before <= withdrawn.decided_at <= datetime.now(UTC)


def test_listing_stores_a_pending_request_past_its_expiry_as_expired(state_url):
    """`list` (and `expire`) end pending requests whose time is up, and only those: a request is
    still pending at its expiry instant, decided ones keep their decision."""
    store = ApprovalStore(state_url, ttl=timedelta(minutes=5))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    stale = _request(store, step=1, now=t0)
    decided = _request(store, step=2, now=t0)
    store.decide(decided.approval_id, identity=ALICE, approve=True, args_digest=DIGEST, now=t0 + timedelta(minutes=1))
    assert [a.approval_id for a in store.list("pending", now=t0 + timedelta(minutes=5))] == [stale.approval_id]
    assert store.list("pending", now=t0 + timedelta(minutes=6)) == []
    expired = store.get(stale.approval_id)
    assert (expired.status, expired.reason, expired.approver) == (
        ApprovalStatus.expired, "expired before a decision", None)
    assert expired.decided_at == t0 + timedelta(minutes=6)
    kept = store.get(decided.approval_id)
    assert (kept.status, kept.decided_at) == (ApprovalStatus.approved, t0 + timedelta(minutes=1))
    with pytest.raises(ApprovalError, match=r"already expired \(expired before a decision\)"):
        store.decide(stale.approval_id, identity=ALICE, approve=True, args_digest=DIGEST,
                     now=t0 + timedelta(minutes=6))
    later = _request(store, step=3, now=t0 + timedelta(minutes=6))
    assert store.expire(now=t0 + timedelta(minutes=11)) == 0  # `later` expires after t0+11min
    assert store.expire(now=t0 + timedelta(minutes=12)) == 1
    assert store.get(later.approval_id).status == ApprovalStatus.expired


def test_an_approval_counts_only_for_its_own_case_and_step(state_url):
    """The same arguments approved for one case's step are not approved for another case or step."""
    store = ApprovalStore(state_url)
    held = _request(store)
    store.decide(held.approval_id, identity=ALICE, approve=True, args_digest=DIGEST)
    assert store.approved("case-1", 3, DIGEST).approval_id == held.approval_id
    assert store.approved("case-2", 3, DIGEST) is None
    assert store.approved("case-1", 4, DIGEST) is None


def test_requests_are_listed_and_withdrawn_oldest_first(state_url, monkeypatch):
    """Oldest first, ties by id, whatever order they were stored in (ids chosen so that neither
    the id nor the storing order alone gives that order)."""
    from types import SimpleNamespace

    from opsagent.policy import approvals as approvals_module

    ids = iter(["a" * 12, "c" * 12, "b" * 12])
    monkeypatch.setattr(approvals_module, "uuid", SimpleNamespace(uuid4=lambda: SimpleNamespace(hex=next(ids))))
    store = ApprovalStore(state_url)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    newest = _request(store, step=1, now=t0 + timedelta(minutes=1))  # apr-aaa…
    tied_c = _request(store, step=2, now=t0)  # apr-ccc…
    tied_b = _request(store, step=3, now=t0)  # apr-bbb…
    listed = [a.approval_id for a in store.list(now=t0 + timedelta(minutes=2))]
    assert listed == [tied_b.approval_id, tied_c.approval_id, newest.approval_id]
    withdrawn = store.withdraw("case-1", "the case ended", now=t0 + timedelta(minutes=2))
    assert [a.requested_at for a in withdrawn] == [t0, t0, t0 + timedelta(minutes=1)]
    assert {a.status for a in withdrawn} == {ApprovalStatus.expired}


def test_deciding_an_unknown_request_is_refused(tmp_path):
    with pytest.raises(ApprovalError, match=r"^no approval 'apr-nope'$"):
        ApprovalStore(tmp_path / "a.sqlite").decide("apr-nope", identity=ALICE, approve=True, args_digest=DIGEST)


def test_a_request_stores_what_the_approver_is_shown(tmp_path):
    """The held action, its risk, reasons and dry-run preview survive a reopen as given; preview
    values JSON cannot hold (a time, a decimal) are kept as text rather than failing the request."""
    from decimal import Decimal

    store = ApprovalStore(tmp_path / "a.sqlite")
    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    preview = {"diff": {"before": {"billed_weight_kg": 6.0}, "after": {"billed_weight_kg": 2.0}},
               "as_of": at, "amount": Decimal("12.50")}
    held = store.request(case_id="case-1", exception_type="weight_mismatch", step=3,
                         tool="tms_adjust_billed_weight", args=ARGS, args_digest=DIGEST, risk="high",
                         reasons=["irreversible", "over 1 kg"], policy_version="v7", preview=preview)
    again = ApprovalStore(tmp_path / "a.sqlite").get(held.approval_id)
    assert (again.case_id, again.exception_type, again.step, again.tool, again.args, again.args_digest) == (
        "case-1", "weight_mismatch", 3, "tms_adjust_billed_weight", ARGS, DIGEST)
    assert (again.risk, again.reasons, again.policy_version) == ("high", ["irreversible", "over 1 kg"], "v7")
    assert again.preview == {"diff": preview["diff"], "as_of": str(at), "amount": "12.50"}


def test_a_decision_after_the_expiry_records_why_it_expired(tmp_path):
    store = ApprovalStore(tmp_path / "a.sqlite", ttl=timedelta(minutes=5))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    req = _request(store, now=t0)
    with pytest.raises(ApprovalError, match=rf"^{req.approval_id} expired at 2026-01-01T00:05:00\+00:00$"):
        store.decide(req.approval_id, identity=ALICE, approve=True, args_digest=DIGEST, now=t0 + timedelta(minutes=6))
    ended = store.get(req.approval_id)
    assert (ended.status, ended.reason, ended.approver, ended.decided_at) == (
        ApprovalStatus.expired, "expired before a decision", None, t0 + timedelta(minutes=6))


def test_expiry_without_a_time_given_is_in_utc_whatever_the_hosts_zone(tmp_path, monkeypatch):
    """Stored times are UTC: on a host ten hours behind UTC, a request an hour past its expiry
    is still found expired (a local wall-clock time would put it nine hours in the future)."""
    import time

    store = ApprovalStore(tmp_path / "a.sqlite", ttl=timedelta(hours=1))
    req = _request(store, now=datetime.now(UTC) - timedelta(hours=2))
    monkeypatch.setenv("TZ", "Pacific/Honolulu")
    time.tzset()
    try:
        assert store.expire() == 1
    finally:
        monkeypatch.undo()
        time.tzset()
    assert store.get(req.approval_id).status == ApprovalStatus.expired


BOB = Identity(name="bob", roles=frozenset({Role.approver}))


@pytest.mark.parametrize("approve,reason", [(True, "ticket checked"), (False, "weight ticket missing")])
@pytest.mark.parametrize("changed", ["decision", "approver", "digest", "reason"])
def test_a_retry_differing_in_one_thing_from_the_recorded_decision_is_refused(tmp_path, approve, reason, changed):
    """Only the identical decision is answered as a retry. Each call below differs from the
    recorded one in exactly one thing (the others equal), so none of the four conditions stands in
    for another: in particular the other decision sent with the same reason (an approver turning
    an approval into a rejection, or back) must be refused, not answered with the recorded one."""
    store = ApprovalStore(tmp_path / "a.sqlite")
    req = _request(store)
    first = store.decide(req.approval_id, identity=ALICE, approve=approve, args_digest=DIGEST, reason=reason)
    retry = {"identity": ALICE, "approve": approve, "args_digest": DIGEST, "reason": reason}
    retry.update({"decision": {"approve": not approve}, "approver": {"identity": BOB},
                  "digest": {"args_digest": OTHER_DIGEST}, "reason": {"reason": "another reason"}}[changed])
    with pytest.raises(ApprovalError, match=f"already {first.status.value} \\({reason}\\)$"):
        store.decide(req.approval_id, **retry)
    assert store.get(req.approval_id) == first
    assert store.decide(req.approval_id, identity=ALICE, approve=approve, args_digest=DIGEST, reason=reason) == first


def test_a_retry_without_a_reason_matches_one_recorded_with_an_empty_reason(tmp_path):
    """No reason and an empty one are the same decision (the API takes `""` or `null`), so the
    retry of an approval is answered, not refused as a different one."""
    store = ApprovalStore(tmp_path / "a.sqlite")
    req = _request(store)
    first = store.decide(req.approval_id, identity=ALICE, approve=True, args_digest=DIGEST, reason="")
    assert store.decide(req.approval_id, identity=ALICE, approve=True, args_digest=DIGEST, reason=None) == first
    assert store.decide(req.approval_id, identity=ALICE, approve=True, args_digest=DIGEST, reason="") == first
