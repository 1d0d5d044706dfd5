"""The policy actor is the trust boundary: it authenticates every approval, mode change, reload and
submitter record itself, refuses a caller's own word about who it is (an `Identity` object), keeps
separation of duties, logs every refusal and changes nothing else when it refuses.

Each test is one hole of issue 19 as an attacker inside the cluster would try it (no Ray: the
actor class in this process, called the way a Ray handle is)."""

from __future__ import annotations

import asyncio

import pytest

from opsagent.cluster.actors import ExecutorActor, PolicyActor, stop_policy_threads
from opsagent.errors import ApprovalError, AuthError, ConfigError
from opsagent.policy.config import load_default_policy
from opsagent.policy.credentials import Credential
from opsagent.policy.identity import Identity, Role, TokenStore
from opsagent.policy.records import PolicyDecision, ToolCallRequest, args_digest
from tests.fakes.local_actors import LocalActor
from opsagent.policy.state import state_db

TOOL = "tms_adjust_billed_weight"
ARGS = {"shipment_id": "SHP-1", "billed_weight_kg": 12.0, "reason": "rebill"}
FORGED = Identity(name="mallory", roles=frozenset({Role.admin, Role.approver}))


@pytest.fixture
def world(tmp_path, registry):
    """A policy actor over a fresh state folder, its token store and one held action of a case
    submitted by `alice` (who also holds the approver role)."""
    state = tmp_path / "state"
    store = TokenStore(state_db(state))
    tokens = {name: Credential.of(store.add(name, roles)) for name, roles in (
        ("alice", ["submitter", "approver"]), ("bob", ["approver"]), ("root", ["admin"]),
        ("sam", ["submitter"]))}
    tokens["alice-admin"] = Credential.of(store.add("alice", ["admin"]))  # the submitter's admin token
    policy = LocalActor(PolicyActor, load_default_policy(), registry, str(state))
    request = ToolCallRequest(case_id="case-1", exception_type="weight_mismatch", step=3, tool=TOOL,
                              args=ARGS, entities={"shipment_id": "SHP-1"}, submitted_by="alice")
    decision = PolicyDecision(verdict="require_approval", risk="high", reasons=["high risk"], checks=[],
                              policy_version=policy.instance.version(), args_digest=args_digest(TOOL, ARGS))
    approval = policy.instance.request_approval(request, decision, {"diff": {}})

    class World:
        pass

    w = World()
    w.policy, w.tokens, w.approval, w.state, w.store = policy, tokens, approval, state, store
    yield w
    stop_policy_threads(policy.instance)


def call(actor, method, *args):
    return asyncio.run(getattr(actor, method).remote(*args))


def snapshot(w):
    """Everything a refused call must leave as it was."""
    return (call(w.policy, "list_approvals", None), call(w.policy, "version"),
            call(w.policy, "autonomy_status"))


@pytest.mark.parametrize("credential", [FORGED, "oat_not-a-token", None, {"token": "x"},
                                        Credential.of("oat_unknown")])
def test_an_approval_with_a_forged_identity_is_refused_and_changes_nothing(world, credential):
    """Hole 2: any Ray participant could pass an Identity object to decide_approval."""
    before = snapshot(world)
    with pytest.raises(AuthError):
        call(world.policy, "decide_approval", world.approval.approval_id, credential, True,
             world.approval.args_digest, None)
    assert snapshot(world) == before
    (refusal,) = call(world.policy, "refusals")
    assert (refusal.operation, refusal.target, refusal.caller) == (
        "decide_approval", world.approval.approval_id, "unauthenticated")


@pytest.mark.parametrize("who", [FORGED, "sam", "bob"])
def test_a_reload_needs_an_admin_credential_and_a_refused_one_changes_nothing(world, who):
    """Hole 2: reload took no identity at all."""
    credential = world.tokens[who] if isinstance(who, str) else who
    before = snapshot(world)
    text = "classes: {}\n"  # would deny everything
    with pytest.raises(AuthError):
        call(world.policy, "reload", credential, text)
    assert snapshot(world) == before
    assert call(world.policy, "refusals")[-1].operation == "reload"


def test_a_reload_takes_yaml_text_only(world, tmp_path):
    """Hole 7 at the boundary: a path, an object or an alias bomb is refused, nothing is read."""
    secret = tmp_path / "server-only.yaml"
    secret.write_text("classes: {}\nname: leaked-secret-line\n")
    before = snapshot(world)
    for body in (str(secret), load_default_policy(), "a: &a [x, x]\nb: [*a, *a]\n"):
        with pytest.raises(ConfigError) as refused:
            call(world.policy, "reload", world.tokens["root"], body)
        assert "leaked-secret-line" not in str(refused.value)
    assert snapshot(world) == before
    version = call(world.policy, "reload", world.tokens["root"], load_default_policy_text())
    assert version == before[1]


def load_default_policy_text() -> str:
    from importlib.resources import files
    return files("opsagent.policy").joinpath("default.yaml").read_text()


def test_a_mode_change_with_a_forged_identity_is_refused(world):
    before = snapshot(world)
    for credential in (FORGED, world.tokens["bob"]):
        with pytest.raises(AuthError):
            call(world.policy, "set_mode", "weight_mismatch", "autonomous", credential, "pwned")
    assert snapshot(world) == before
    change = call(world.policy, "set_mode", "weight_mismatch", "supervised", world.tokens["root"], "ok")
    assert change.actor == "root"


@pytest.mark.parametrize("who", ["alice", "alice-admin"])
def test_the_submitter_cannot_approve_its_own_case(world, who):
    """Hole 3: a token with submitter and approver (or admin) approved its own case's action."""
    before = snapshot(world)
    with pytest.raises(ApprovalError, match="separation of duties"):
        call(world.policy, "decide_approval", world.approval.approval_id, world.tokens[who], True,
             world.approval.args_digest, None)
    assert snapshot(world) == before
    assert call(world.policy, "refusals")[-1].caller == "alice"
    decided = call(world.policy, "decide_approval", world.approval.approval_id, world.tokens["bob"], True,
                   world.approval.args_digest, None)
    assert (decided.status, decided.approver) == ("approved", "bob")


def test_a_submitter_the_front_door_recorded_cannot_approve_even_if_the_case_manager_forgets(world, registry):
    """The case manager's word about the submitter is not needed: the policy recorded it from the
    submitter's own credential."""
    request = ToolCallRequest(case_id="case-2", exception_type="weight_mismatch", step=1, tool=TOOL,
                              args=ARGS, entities={"shipment_id": "SHP-1"}, submitted_by=None)
    decision = PolicyDecision(verdict="require_approval", risk="high", reasons=["high risk"], checks=[],
                              policy_version="v", args_digest=args_digest(TOOL, ARGS))
    call(world.policy, "record_submission", world.tokens["alice"], "case-2")
    with pytest.raises(AuthError):  # only a submitter's own credential records a submission
        call(world.policy, "record_submission", world.tokens["bob"], "case-3")
    approval = call(world.policy, "request_approval", request, decision, None)
    with pytest.raises(ApprovalError, match="separation of duties"):
        call(world.policy, "decide_approval", approval.approval_id, world.tokens["alice"], True,
             approval.args_digest, None)


def test_separation_of_duties_can_be_turned_off_per_class(world):
    text = load_default_policy_text().replace(
        "  weight_mismatch:\n", "  weight_mismatch:\n    separation_of_duties: false\n", 1)
    call(world.policy, "reload", world.tokens["root"], text)
    decided = call(world.policy, "decide_approval", world.approval.approval_id, world.tokens["alice"], True,
                   world.approval.args_digest, None)
    assert decided.approver == "alice"


def test_executors_get_the_public_key_only_and_refuse_what_it_cannot_verify(world, registry, tmp_path):
    """Hole 1: the private key stays in the policy actor; the key file it created is private."""
    public = call(world.policy, "public_keys")
    assert b"PRIVATE" not in public
    key_file = world.state / "permit-signing-key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    executor = LocalActor(ExecutorActor, registry, public)
    assert not hasattr(executor.instance._executor, "permit_key")
    with pytest.raises(ConfigError):
        LocalActor(ExecutorActor, registry, key_file.read_bytes())


def test_the_api_refuses_a_path_and_an_alias_bomb_for_put_policy(front_door, tmp_path):
    """Hole 7 over HTTP: a one-line body naming a server file is parsed as YAML text (a string,
    not a policy) and the file is never read; an alias bomb is refused before it grows."""
    import httpx

    secret = tmp_path / "server-only.yaml"
    secret.write_text("classes: {}\nname: leaked-secret-line\n")
    bomb = "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 8) + "]\n" for i in range(8))
    assert len(bomb) < 500
    with httpx.Client(base_url=front_door.url, headers=front_door.headers("admin"), timeout=30) as admin:
        version = admin.get("/v1/policy").json()["version"]
        for body in (str(secret), str(secret).replace(".yaml", ".yml"), bomb):
            answer = admin.put("/v1/policy", json={"yaml": body})
            assert answer.status_code == 422, answer.text
            assert "leaked-secret-line" not in answer.text
        assert admin.get("/v1/policy").json()["version"] == version
