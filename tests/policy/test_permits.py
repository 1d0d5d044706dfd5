"""Permits: only an allow carries one, and no bypass gets one accepted for anything else; only
the policy's private key signs one, and nothing but the policy holds it."""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle

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
from opsagent.policy.permits import (
    KEY_ENV, LEGACY_KEY_ENV, PUBLIC_KEYS_ENV, PermitSigner, PermitVerifier, load_or_create_signer,
    permit_key_from_env, public_keys_from_env,
)
from opsagent.policy.records import Permit, canonical_json

SIGNER = new_permit_key()
KEY = SIGNER.verifier()  # what executors hold: the public key
ARGS = {"invoice_id": "INV-1", "amount": 100, "currency": "EUR", "reason": "overbilled"}
CREDIT = "billing_issue_credit"


@pytest.fixture
def engine(billing_policy, registry, clock):
    return PolicyEngine(billing_policy(), registry, permit_key=SIGNER, clock=clock)


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
    ({"signature": "0" * 128}, "signature is not valid"),
    ({"signature": "not hex"}, "signature is not valid"),
    ({"key_id": "0" * 16}, "unknown key id"),
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


def test_a_verifier_is_built_from_public_keys_only() -> None:
    with pytest.raises(ConfigError, match="private key"):
        PermitVerifier.from_pem(SIGNER.private_pem())
    with pytest.raises(ConfigError, match="no PEM public key"):
        PermitVerifier.from_pem(b"not a key")


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
    verify_permit(issued, CREDIT, ARGS, "CASE-1", 1, key.verifier(), clock.now)
    with pytest.raises(PermitError):
        verify_permit(issued, CREDIT, ARGS, "CASE-1", 1, new_permit_key().verifier(), clock.now)


def test_nothing_outside_the_policy_can_forge_a_permit(permit, clock) -> None:
    """Hole 1: the key executors (and the factory the case manager holds) carry is public. Every
    byte of it, used as an HMAC key as the old build did, or as anything else, makes no valid
    permit; the private key cannot be pickled out of the policy's process."""
    from opsagent.cluster.adapters import ExecutorFactory

    public_pem = SIGNER.verifier().public_pem()
    factory = ExecutorFactory(None, public_pem, 10.0, {})
    held = pickle.dumps(factory)  # what a case manager holds, as it would travel
    assert SIGNER.private_pem() not in held and b"PRIVATE" not in held
    raw_private = SIGNER._private.private_bytes_raw()
    assert raw_private not in held and raw_private not in pickle.dumps(KEY)
    with pytest.raises(TypeError, match="never leaves"):
        pickle.dumps(SIGNER)
    with pytest.raises(ValueError, match="public keys"):
        ExecutorFactory(None, SIGNER.private_pem(), 10.0, {})
    fields = {**permit.model_dump(exclude={"signature"}), "tool": "tms_adjust_billed_weight"}
    for secret in (public_pem, *KEY._raw.values()):
        forged_sig = hmac.new(secret, canonical_json(fields).encode(), hashlib.sha256).hexdigest()
        forged = Permit(**fields, signature=forged_sig)
        with pytest.raises(PermitError, match="signature is not valid"):
            verify_permit(forged, "tms_adjust_billed_weight", ARGS, "CASE-1", 1, KEY, clock.now)


def test_keys_rotate_by_key_id(tmp_path, registry, billing_policy, credit, clock) -> None:
    old, new = new_permit_key(), new_permit_key()
    keys = tmp_path / "public.pem"
    keys.write_bytes(old.public_pem())
    verifier = PermitVerifier.from_file(keys)
    by_old = PolicyEngine(billing_policy(), registry, permit_key=old, clock=clock).authorize(credit()).permit
    by_new = PolicyEngine(billing_policy(), registry, permit_key=new, clock=clock).authorize(credit()).permit
    assert (by_old.key_id, by_new.key_id) == (old.key_id, new.key_id) and old.key_id != new.key_id
    verify_permit(by_old, CREDIT, ARGS, "CASE-1", 1, verifier, clock.now)
    with pytest.raises(PermitError, match="unknown key id"):
        verify_permit(by_new, CREDIT, ARGS, "CASE-1", 1, verifier, clock.now)
    keys.write_bytes(old.public_pem() + new.public_pem())  # rotation: the new key is published
    import os
    os.utime(keys, (clock.now + 5, clock.now + 5))
    for issued in (by_old, by_new):  # both verify during the rotation, re-read on the unknown id
        verify_permit(issued, CREDIT, ARGS, "CASE-1", 1, verifier, clock.now)
    assert set(verifier.key_ids) == {old.key_id, new.key_id}


def test_keys_come_from_files_with_clear_errors(tmp_path, monkeypatch) -> None:
    assert permit_key_from_env({}) is None and public_keys_from_env({}) is None
    path = tmp_path / "signing.pem"
    with pytest.raises(ConfigError, match="does not exist"):
        permit_key_from_env({KEY_ENV: str(path)})
    path.write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        permit_key_from_env({KEY_ENV: str(path)})
    with pytest.raises(ConfigError, match="no longer used"):
        permit_key_from_env({LEGACY_KEY_ENV: "ab" * 32})
    made = load_or_create_signer(tmp_path / "state" / "key.pem")
    assert (tmp_path / "state" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert load_or_create_signer(tmp_path / "state" / "key.pem").key_id == made.key_id
    assert permit_key_from_env({KEY_ENV: str(tmp_path / "state" / "key.pem")}).key_id == made.key_id
    (tmp_path / "pub.pem").write_bytes(made.public_pem())
    assert public_keys_from_env({PUBLIC_KEYS_ENV: str(tmp_path / "pub.pem")}).key_ids == [made.key_id]
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(LEGACY_KEY_ENV, raising=False)
    assert process_permit_key() is process_permit_key()
    assert isinstance(process_permit_key(), PermitSigner)


def test_a_signing_key_of_the_wrong_kind_or_an_unreadable_file_is_named_in_the_error(tmp_path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

    ec_pem = generate_private_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ConfigError, match=r"^the permit signing key is a \w*(EC|EllipticCurve)\w*PrivateKey, not an "
                                          r"Ed25519 private key$"):
        PermitSigner.from_pem(ec_pem)
    path = tmp_path / "ec.pem"
    path.write_bytes(ec_pem)
    with pytest.raises(ConfigError, match=rf"^permit signing key file {path} is a "):
        PermitSigner.from_file(path)
    path.write_bytes(b"not a key")
    with pytest.raises(ConfigError, match=rf"^permit signing key file {path} is not a PEM private key"):
        PermitSigner.from_file(path)
    with pytest.raises(ConfigError, match=rf"^permit signing key file {tmp_path / 'no.pem'} does not exist$"):
        PermitSigner.from_file(tmp_path / "no.pem")
    with pytest.raises(ConfigError, match=rf"^cannot read permit signing key file {tmp_path}: "):
        PermitSigner.from_file(tmp_path)  # a folder


def test_a_merged_verifier_accepts_either_sides_keys_and_keeps_the_file_to_reread(
        tmp_path, registry, billing_policy, credit, clock) -> None:
    old, new = new_permit_key(), new_permit_key()
    keys = tmp_path / "public.pem"
    keys.write_bytes(old.public_pem())
    from_file = PermitVerifier.from_file(keys)
    merged = new.verifier().merged(from_file)
    assert set(merged.key_ids) == {old.key_id, new.key_id}
    for signer in (old, new):
        issued = PolicyEngine(billing_policy(), registry, permit_key=signer, clock=clock).authorize(credit()).permit
        verify_permit(issued, CREDIT, ARGS, "CASE-1", 1, merged, clock.now)
    third = new_permit_key()  # published in the file later: the merged verifier re-reads it
    by_third = PolicyEngine(billing_policy(), registry, permit_key=third, clock=clock).authorize(credit()).permit
    keys.write_bytes(old.public_pem() + third.public_pem())
    import os
    os.utime(keys, (clock.now + 5, clock.now + 5))
    verify_permit(by_third, CREDIT, ARGS, "CASE-1", 1, merged, clock.now)
    stranger = PolicyEngine(billing_policy(), registry, permit_key=new_permit_key(), clock=clock).authorize(credit())
    with pytest.raises(PermitError, match="unknown key id"):
        verify_permit(stranger.permit, CREDIT, ARGS, "CASE-1", 1, merged, clock.now)


@pytest.mark.parametrize("not_a_signer", [KEY, SIGNER.public_pem(), KEY._raw[SIGNER.key_id], "ab" * 32])
def test_only_the_policys_signing_key_can_issue_a_permit(not_a_signer, clock) -> None:
    """What executors and the case manager hold (a verifier, a public key's PEM or raw bytes) or the
    old builds' shared HMAC secret cannot be handed to `issue_permit` to make one."""
    with pytest.raises(ConfigError, match=r"^permits are signed with the policy's PermitSigner "
                                          r"\(an Ed25519 private key\)$"):
        issue_permit(tool=CREDIT, args_digest=args_digest(CREDIT, ARGS), case_id="CASE-1", step=1,
                     policy_version="v", key=not_a_signer, ttl_s=60, now=clock.now)


@pytest.mark.parametrize("raw", [SIGNER.public_pem(), b"ab" * 32])
def test_a_permit_is_checked_with_a_verifier_never_with_raw_key_bytes(permit, clock, raw) -> None:
    with pytest.raises(ConfigError, match=r"^permits are verified with a PermitVerifier, got bytes$"):
        verify_permit(permit, CREDIT, ARGS, "CASE-1", 1, raw, clock.now)


def test_without_a_time_given_permits_are_issued_and_checked_on_the_wall_clock() -> None:
    """The executor passes no `now`: a fresh permit verifies, a stale one is refused."""
    import time

    digest = args_digest(CREDIT, ARGS)
    before = time.time()
    fresh = issue_permit(tool=CREDIT, args_digest=digest, case_id="CASE-1", step=1, policy_version="v",
                         key=SIGNER, ttl_s=60)
    assert before <= fresh.issued_at <= time.time() and fresh.expires_at == fresh.issued_at + 60
    assert verify_permit(fresh, CREDIT, ARGS, "CASE-1", 1, KEY) == fresh
    stale = issue_permit(tool=CREDIT, args_digest=digest, case_id="CASE-1", step=1, policy_version="v",
                         key=SIGNER, ttl_s=60, now=time.time() - 120)
    with pytest.raises(PermitError, match=r"^permit expired \d+\.\ds ago$") as refused:
        verify_permit(stale, CREDIT, ARGS, "CASE-1", 1, KEY)
    ago = float(str(refused.value).split()[2].rstrip("s"))
    assert 59 <= ago <= 120  # about 60 s past its expiry


def test_a_public_keys_file_is_named_in_its_errors(tmp_path) -> None:
    """An executor's extra public keys file that holds a private key, or cannot be read, is
    refused with the file's path in the error (and so is the environment variable naming it)."""
    path = tmp_path / "public.pem"
    path.write_bytes(SIGNER.private_pem())
    for load in (lambda: PermitVerifier.from_file(path),
                 lambda: public_keys_from_env({PUBLIC_KEYS_ENV: f" {path} "})):
        with pytest.raises(ConfigError, match=rf"^permit public keys file {path} holds a private key: "):
            load()
    with pytest.raises(ConfigError, match=rf"^cannot read permit public keys file {tmp_path / 'no.pem'}: "):
        PermitVerifier.from_file(tmp_path / "no.pem")


def test_a_verifier_with_several_keys_hands_out_every_one_as_pem() -> None:
    """What the policy hands executors (`public_pem`) is each key's PEM block, loadable again."""
    other = new_permit_key()
    both = SIGNER.verifier().merged(other.verifier())
    assert both.public_pem() == SIGNER.public_pem() + other.public_pem()
    assert PermitVerifier.from_pem(both.public_pem()).key_ids == sorted([SIGNER.key_id, other.key_id])


@pytest.mark.parametrize("where", ["key.pem", "new/folder/key.pem"])
def test_a_signing_key_is_created_whether_or_not_its_folder_exists(tmp_path, where) -> None:
    made = load_or_create_signer(tmp_path / where)
    assert (tmp_path / where).read_bytes() == made.private_pem()
    assert load_or_create_signer(tmp_path / where).key_id == made.key_id


def test_a_signing_key_another_process_made_meanwhile_is_used_not_overwritten(tmp_path, monkeypatch) -> None:
    """Two policy processes starting at once on one machine end up with one key: the one that
    loses the race to create the file loads the winner's key instead of replacing it."""
    from opsagent.policy import permits

    path = tmp_path / "key.pem"
    theirs = new_permit_key()
    real_open = permits.os.open

    def create_first(file, flags, mode=0o777):  # the other process creates the file just before us
        path.write_bytes(theirs.private_pem())
        return real_open(file, flags, mode)

    monkeypatch.setattr(permits.os, "open", create_first)
    ours = load_or_create_signer(path)
    monkeypatch.undo()
    assert ours.key_id == theirs.key_id and path.read_bytes() == theirs.private_pem()


def test_a_verifier_refuses_a_malformed_or_non_ed25519_public_key() -> None:
    """Only Ed25519 public keys verify permits; anything else in the PEM is refused, saying what."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

    ec_public = generate_private_key(SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ConfigError, match=r"^permit public keys: a \w*(EC|EllipticCurve)\w*PublicKey, "
                                          r"not an Ed25519 public key$"):
        PermitVerifier.from_pem(SIGNER.public_pem() + ec_public)
    with pytest.raises(ConfigError, match=r"^permit public keys: not a PEM public key: "):
        PermitVerifier.from_pem(b"-----BEGIN PUBLIC KEY-----\nnonsense\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match=r"^permit public keys holds a private key: "):
        PermitVerifier.from_pem(SIGNER.private_pem())
    assert PermitVerifier.from_pem(SIGNER.public_pem().decode()).key_ids == [SIGNER.key_id]  # text PEM


def test_without_a_configured_key_a_process_generates_one_and_keeps_it(monkeypatch) -> None:
    from opsagent.policy import permits

    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(LEGACY_KEY_ENV, raising=False)
    monkeypatch.setattr(permits, "_process_signer", None)  # as in a fresh process
    made = process_permit_key()
    assert isinstance(made, PermitSigner) and process_permit_key() is made
