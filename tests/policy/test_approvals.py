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
