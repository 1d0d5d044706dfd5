"""Permits: only an allow carries one, and no bypass gets one accepted for anything else."""

from __future__ import annotations

import json

import pytest

from opsagent.errors import ConfigError, PermitError
from opsagent.policy import (
    PolicyEngine,
    args_digest,
    issue_permit,
    new_permit_key,
    process_permit_key,
    verify_permit,
)
from opsagent.policy.permits import KEY_ENV, permit_key_from_env

KEY = b"k" * 32
ARGS = {"invoice_id": "INV-1", "amount": 100, "currency": "EUR", "reason": "overbilled"}
CREDIT = "billing_issue_credit"


@pytest.fixture
def engine(billing_policy, registry, clock):
    return PolicyEngine(billing_policy(), registry, permit_key=KEY, clock=clock)


@pytest.fixture
def permit(engine, credit):
    decision = engine.authorize(credit(case_id="CASE-1", step=1, amount=100))
    assert decision.verdict == "allow"
    return decision.permit


def test_an_allow_carries_a_permit_for_exactly_that_call(engine, permit, clock) -> None:
    assert (permit.tool, permit.case_id, permit.step) == (CREDIT, "CASE-1", 1)
    assert permit.args_digest == args_digest(CREDIT, ARGS)
    assert permit.policy_version == engine.version
    assert verify_permit(permit, CREDIT, dict(reversed(ARGS.items())), "CASE-1", 1, KEY, clock.now) == permit


def test_a_permit_survives_a_trip_through_json(permit, clock) -> None:
    wire = json.loads(permit.model_dump_json())
    assert verify_permit(wire, CREDIT, ARGS, "CASE-1", 1, KEY, clock.now) == permit


@pytest.mark.parametrize(("change", "why"), [
    ({"signature": "0" * 64}, "signature is not valid"),
    ({"args_digest": args_digest(CREDIT, {**ARGS, "amount": 5000})}, "signature is not valid"),
    ({"expires_at": 9e12}, "signature is not valid"),
    ({"step": 2}, "signature is not valid"),
    ({"tool": "billing_refund"}, "signature is not valid"),
])
def test_an_altered_permit_is_refused(permit, clock, change, why) -> None:
    forged = permit.model_copy(update=change)
    call = {"tool": forged.tool, "step": forged.step}
    args = {**ARGS, "amount": 5000} if "args_digest" in change else ARGS
    with pytest.raises(PermitError, match=why):
        verify_permit(forged, call["tool"], args, "CASE-1", call["step"], KEY, clock.now)


def test_a_permit_signed_with_another_key_is_refused(clock) -> None:
    forged = issue_permit(tool=CREDIT, args_digest=args_digest(CREDIT, ARGS), case_id="CASE-1", step=1,
                          policy_version="v", key=new_permit_key(), ttl_s=60, now=clock.now)
    with pytest.raises(PermitError, match="signature is not valid"):
        verify_permit(forged, CREDIT, ARGS, "CASE-1", 1, KEY, clock.now)


@pytest.mark.parametrize(("tool", "args", "case_id", "step", "why"), [
    (CREDIT, {**ARGS, "amount": 5000}, "CASE-1", 1, "other arguments"),
    (CREDIT, {**ARGS, "extra": True}, "CASE-1", 1, "other arguments"),
    ("billing_refund", ARGS, "CASE-1", 1, "is for tool 'billing_issue_credit'"),
    (CREDIT, ARGS, "CASE-1", 2, "not case CASE-1 step 2"),
    (CREDIT, ARGS, "CASE-2", 1, "not case CASE-2 step 1"),
])
def test_a_genuine_permit_fits_no_other_call(permit, clock, tool, args, case_id, step, why) -> None:
    with pytest.raises(PermitError, match=why):
        verify_permit(permit, tool, args, case_id, step, KEY, clock.now)


def test_an_expired_permit_is_refused(permit) -> None:
    verify_permit(permit, CREDIT, ARGS, "CASE-1", 1, KEY, permit.expires_at - 0.001)
    with pytest.raises(PermitError, match="expired"):
        verify_permit(permit, CREDIT, ARGS, "CASE-1", 1, KEY, permit.expires_at)


@pytest.mark.parametrize("missing", [None, {}, {"tool": CREDIT}, {"signature": "x"}])
def test_a_missing_or_malformed_permit_is_refused(missing, clock) -> None:
    with pytest.raises(PermitError, match="no permit|malformed"):
        verify_permit(missing, CREDIT, ARGS, "CASE-1", 1, KEY, clock.now)


def test_a_short_key_is_refused(permit, clock) -> None:
    with pytest.raises(PermitError, match="no usable permit key"):
        verify_permit(permit, CREDIT, ARGS, "CASE-1", 1, b"", clock.now)


def test_only_an_allow_from_authorize_carries_a_permit(engine, credit) -> None:
    assert engine.decide(credit()).permit is None  # a preview
    assert engine.authorize(credit(amount=250)).verdict == "require_approval"  # high risk
    assert engine.authorize(credit(amount=250)).permit is None
    assert engine.authorize(credit(amount=20_000)).permit is None  # denied
    assert engine.authorize(credit(tool="billing_refund")).permit is None


def test_an_approval_yields_a_permit_only_for_the_approved_arguments(engine, credit, clock) -> None:
    held = engine.authorize(credit(step=4, amount=250))
    approved = engine.authorize(
        credit(step=4, amount=250), approved_digest=held.args_digest, approved_by="alice"
    )
    assert approved.verdict == "allow" and approved.risk == "high"
    verify_permit(approved.permit, CREDIT, {**ARGS, "amount": 250}, "CASE-1", 4, KEY, clock.now)
    changed = engine.authorize(credit(step=4, amount=280), approved_digest=held.args_digest)
    assert (changed.verdict, changed.permit) == ("deny", None)
    assert "needs a new approval" in changed.reasons[0]


def test_settle_refuses_a_forged_permit(engine, permit) -> None:
    with pytest.raises(PermitError):
        engine.settle(permit.model_copy(update={"step": 7}), executed=False)
    assert engine.settle(permit, executed=False) == "released"


def test_engines_sharing_a_key_accept_each_others_permits(billing_policy, registry, credit, clock) -> None:
    key = new_permit_key()
    issued = PolicyEngine(billing_policy(), registry, permit_key=key, clock=clock).authorize(credit()).permit
    verify_permit(issued, CREDIT, ARGS, "CASE-1", 1, key, clock.now)
    with pytest.raises(PermitError):
        verify_permit(issued, CREDIT, ARGS, "CASE-1", 1, new_permit_key(), clock.now)


def test_permit_key_from_the_environment(monkeypatch) -> None:
    assert permit_key_from_env({}) is None
    assert permit_key_from_env({KEY_ENV: "ab" * 16}) == bytes.fromhex("ab" * 16)
    for bad in ("ab" * 8, "not hex"):
        with pytest.raises(ConfigError, match=KEY_ENV):
            permit_key_from_env({KEY_ENV: bad})
    monkeypatch.delenv(KEY_ENV, raising=False)
    assert process_permit_key() == process_permit_key() and len(process_permit_key()) == 32
    monkeypatch.setenv(KEY_ENV, "cd" * 32)
    assert process_permit_key() == bytes.fromhex("cd" * 32)
