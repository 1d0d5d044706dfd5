"""Autonomy modes: a durable, append-only store changed only by admins, failing closed, and enforced
in the policy decision (shadow proposes, supervised holds every write, autonomous as before)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from opsagent.errors import AuthError, AutonomyError, ConfigError
from opsagent.policy import AutonomyStore, Mode, PolicyConfig, PolicyEngine, load_default_policy
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.autonomy import GATES_ACTOR, POLICY_ACTOR
from opsagent.policy.identity import AGENT, Identity, Role
from opsagent.policy.modes import FAIL_CLOSED
from opsagent.policy.service import PolicyService

ADMIN = Identity(name="ada", roles=frozenset({Role.admin}))
APPROVER = Identity(name="alice", roles=frozenset({Role.approver}))
T0 = datetime(2026, 5, 1, 9, tzinfo=UTC)

READ = {"wms_get_shipment": {"shipment_id": "SHP-1", "scanned_weight_kg": 12.5, "scale_check": "passed"}}
DISPUTE = {"shipment_id": "SHP-1", "claimed_weight_kg": 12.5, "reason": "scale says 12.5"}
ADJUST = {"shipment_id": "SHP-1", "billed_weight_kg": 12.5, "reason": "carrier accepted dispute"}


def test_modes_and_history_survive_a_reopen(tmp_path) -> None:
    path = tmp_path / "state" / "autonomy.sqlite"
    store = AutonomyStore(path)
    assert store.seed(load_default_policy(), now=T0)  # every class recorded in its initial mode
    store.set_mode("weight_mismatch", "supervised", identity=ADMIN, reason="shadow agreement 0.93",
                   now=T0 + timedelta(days=1))
    store.set_mode("weight_mismatch", Mode.autonomous, identity=ADMIN, reason="200 approvals, 1 rejected",
                   now=T0 + timedelta(days=9))
    store.close()

    reopened = AutonomyStore(path)
    assert reopened.mode("weight_mismatch", "shadow") == Mode.autonomous
    assert reopened.mode("damage_claim", "autonomous") == Mode.shadow  # recorded beats the policy now
    history = reopened.history("weight_mismatch")
    assert [(h.from_mode, h.to_mode, h.actor, h.automatic) for h in history] == [
        (None, "shadow", POLICY_ACTOR, True), ("shadow", "supervised", "ada", False),
        ("supervised", "autonomous", "ada", False)]
    assert history[-1].reason == "200 approvals, 1 rejected" and history[-1].at == T0 + timedelta(days=9)
    assert reopened.seed(load_default_policy()) == []  # seeding again changes nothing
    for statement in ("UPDATE mode_changes SET to_mode = 'autonomous'", "DELETE FROM mode_changes"):
        with pytest.raises(DBAPIError, match="append-only"), reopened._db.write() as conn:
            conn.execute(text(statement))


def test_only_an_admin_sets_a_mode_and_always_with_a_reason() -> None:
    store = AutonomyStore(":memory:")
    with pytest.raises(AuthError) as denied:
        store.set_mode("weight_mismatch", "autonomous", identity=APPROVER, reason="I approve a lot")
    assert denied.value.status == 403
    with pytest.raises(AuthError):
        store.set_mode("weight_mismatch", "autonomous", identity=AGENT, reason="self-promotion")
    robot = Identity(name="bot", roles=frozenset({Role.admin}), kind="agent")
    with pytest.raises(AutonomyError, match="agent identity"):
        store.set_mode("weight_mismatch", "autonomous", identity=robot, reason="self-promotion")
    with pytest.raises(AutonomyError, match="needs a reason"):
        store.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="  ")
    with pytest.raises(AutonomyError, match="unknown mode 'yolo'"):
        store.set_mode("weight_mismatch", "yolo", identity=ADMIN, reason="why not")
    with pytest.raises(AutonomyError, match="not an exception class"):
        store.set_mode("Weight Mismatch; DROP", "shadow", identity=ADMIN, reason="x")
    assert store.history() == []


def test_setting_the_same_mode_records_nothing() -> None:
    store = AutonomyStore(":memory:")
    first = store.set_mode("weight_mismatch", "supervised", identity=ADMIN, reason="first")
    again = store.set_mode("weight_mismatch", "supervised", identity=ADMIN, reason="again")
    assert again == first and len(store.history()) == 1


def test_demotion_goes_one_stage_down_and_is_recorded_as_automatic() -> None:
    store = AutonomyStore(":memory:")
    assert store.demote("weight_mismatch", reason="nothing recorded") is None
    store.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="earned")
    down = store.demote("weight_mismatch", reason="live accuracy 30/50")
    assert (down.from_mode, down.to_mode, down.actor, down.automatic) == (
        "autonomous", "supervised", GATES_ACTOR, True)
    assert store.demote("weight_mismatch", reason="again").to_mode == Mode.shadow
    assert store.demote("weight_mismatch", reason="and again") is None  # shadow is the floor


def test_an_unreadable_store_or_unknown_class_is_never_more_than_supervised(tmp_path, registry,
                                                                            make_request) -> None:
    broken = tmp_path / "autonomy.sqlite"
    broken.write_bytes(b"this is not a database" * 100)
    store = AutonomyStore(broken)
    assert store.mode("weight_mismatch", "autonomous") == FAIL_CLOSED == Mode.supervised
    assert store.mode("weight_mismatch", "shadow") == Mode.supervised
    with pytest.raises(AutonomyError, match="unusable"):
        store.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="x")
    assert AutonomyStore(":memory:").mode("never_heard_of", None) == Mode.supervised

    config = _autonomous_policy()
    engine = PolicyEngine(config, registry, autonomy=store)  # seeding fails quietly; decisions hold
    low = engine.decide(make_request("tms_open_weight_dispute", DISPUTE, observations=READ))
    assert (low.verdict, low.mode) == ("require_approval", "supervised")
    assert engine.mode("lost_parcel") == Mode.supervised

    class Exploding:
        def mode(self, exception_type, initial=None):
            raise RuntimeError("disk gone")

    assert PolicyEngine(config, registry, autonomy=Exploding()).mode("weight_mismatch") == Mode.supervised


def test_a_stored_mode_that_does_not_parse_fails_closed(tmp_path) -> None:
    path = tmp_path / "autonomy.sqlite"
    AutonomyStore(path).set_mode("weight_mismatch", "shadow", identity=ADMIN, reason="x")
    db = sqlite3.connect(path)  # written around the store, as a damaged or hand-edited file would be
    db.execute("INSERT INTO mode_changes (exception_type, from_mode, to_mode, actor, reason, at, automatic) "
               "VALUES ('weight_mismatch', 'shadow', 'godmode', 'mallory', 'x', '2026-01-01T00:00:00+00:00', 0)")
    db.commit()
    assert AutonomyStore(path).mode("weight_mismatch", "autonomous") == Mode.supervised


def test_the_shipped_policy_starts_every_class_in_shadow() -> None:
    config = load_default_policy()
    assert {c.initial_mode for c in config.classes.values()} == {Mode.shadow}
    assert config.gates.min_cases == 200 and config.gates.confidence == 0.95
    assert PolicyConfig.model_validate({"classes": {"x": {"tools": {}}}}).classes["x"].initial_mode == "shadow"


def test_gates_are_validated_and_a_class_may_override_them() -> None:
    config = PolicyConfig.from_yaml("gates: {min_cases: 50}\nclasses:\n  a: {tools: {}, gates: {threshold: 0.7}}\n"
                                    "  b: {tools: {}}\n")
    assert config.gates_for("a").threshold == 0.7 and config.gates_for("b").min_cases == 50
    with pytest.raises(ConfigError, match="demote_min_cases"):
        PolicyConfig.from_yaml("gates: {demote_window: 10, demote_min_cases: 20}\nclasses: {}\n")
    with pytest.raises(ConfigError, match="threshold"):
        PolicyConfig.from_yaml("gates: {threshold: 1.5}\nclasses: {}\n")
    with pytest.raises(ConfigError, match="initial_mode"):
        PolicyConfig.from_yaml("classes:\n  a: {tools: {}, initial_mode: yolo}\n")


def test_a_class_new_to_the_store_gets_its_initial_mode_once(registry) -> None:
    store = AutonomyStore(":memory:")
    engine = PolicyEngine(load_default_policy(), registry, autonomy=store)
    assert engine.mode("weight_mismatch") == Mode.shadow
    engine.reload(_autonomous_policy())  # the policy now says autonomous: the recorded mode stands
    assert engine.mode("weight_mismatch") == Mode.shadow
    assert [h.actor for h in store.history("weight_mismatch")] == [POLICY_ACTOR]


# --- enforcement in the decision ------------------------------------------------------------

def _autonomous_policy() -> PolicyConfig:
    data = load_default_policy().model_dump(mode="json")
    for class_policy in data["classes"].values():
        class_policy["initial_mode"] = "autonomous"
    return PolicyConfig.model_validate(data)


def _engine(registry, mode: str) -> PolicyEngine:
    store = AutonomyStore(":memory:")
    store.set_mode("weight_mismatch", mode, identity=ADMIN, reason=f"test: {mode}")
    return PolicyEngine(load_default_policy(), registry, autonomy=store)


@pytest.mark.parametrize(("mode", "read", "low_write", "high_write"), [
    ("shadow", "allow", "propose", "propose"),
    ("supervised", "allow", "require_approval", "require_approval"),
    ("autonomous", "allow", "allow", "require_approval"),
])
def test_each_mode_decides_reads_and_writes(registry, make_request, mode, read, low_write, high_write) -> None:
    engine = _engine(registry, mode)
    decisions = [engine.authorize(make_request("wms_get_shipment")),
                 engine.authorize(make_request("tms_open_weight_dispute", DISPUTE, observations=READ)),
                 engine.authorize(make_request("tms_adjust_billed_weight", ADJUST))]
    assert [d.verdict for d in decisions] == [read, low_write, high_write]
    assert [d.risk for d in decisions] == ["low", "low", "high"]
    assert all(d.mode == mode and d.checks[-1] == "autonomy_mode" for d in decisions)
    assert all(any(f"is in {mode} mode" in r for r in d.reasons) for d in decisions)
    # only an allow carries a permit: a proposal or a held write can never be executed
    assert [d.permit is not None for d in decisions] == [v == "allow" for v in (read, low_write, high_write)]


def test_denies_win_in_every_mode(registry, make_request) -> None:
    for mode in Mode:
        engine = _engine(registry, mode)
        outside = engine.decide(make_request("tms_open_weight_dispute", {**DISPUTE, "shipment_id": "SHP-9"},
                                             observations=READ))
        unread = engine.decide(make_request("tms_open_weight_dispute", DISPUTE))
        assert (outside.verdict, unread.verdict) == ("deny", "deny")
        assert outside.mode == mode and "mode" not in outside.reasons[0]


def test_an_approval_releases_a_supervised_write_but_never_a_shadow_one(registry, make_request) -> None:
    request = make_request("tms_open_weight_dispute", DISPUTE, observations=READ)
    for mode, verdict in (("supervised", "allow"), ("shadow", "propose")):
        engine = _engine(registry, mode)
        held = engine.authorize(request)
        approved = engine.authorize(request, approved_digest=held.args_digest, approved_by="alice (apr-1)")
        assert approved.verdict == verdict and (approved.permit is not None) == (verdict == "allow")


def test_proposals_count_as_read_only_in_shadow_mode(registry, make_request) -> None:
    """A later step may depend on what a proposed write would have returned, in shadow mode only:
    once writes run, only what really ran counts."""
    data = load_default_policy().model_dump(mode="json")
    data["classes"]["weight_mismatch"]["tools"]["wms_request_rescan"]["reads"] = {
        "tms_open_weight_dispute.status": {"one_of": ["open"]}}
    config = PolicyConfig.model_validate(data)
    request = make_request("wms_request_rescan", {"shipment_id": "SHP-1", "reason": "dispute opened"},
                           proposed={"tms_open_weight_dispute": {"status": "open"}})
    engines = {}
    for mode in Mode:
        store = AutonomyStore(":memory:")
        store.set_mode("weight_mismatch", mode, identity=ADMIN, reason="test")
        engines[mode.value] = PolicyEngine(config, registry, autonomy=store)
    assert {m: e.decide(request).verdict for m, e in engines.items()} == {
        "shadow": "propose", "supervised": "deny", "autonomous": "deny"}
    # a field the preview does not show (the id a write would create) is unknown: no block in shadow
    unseen = request.model_copy(update={"proposed": {"tms_open_weight_dispute": {"shipment_id": "SHP-1"}}})
    assert engines["shadow"].decide(unseen).verdict == "propose"
    assert engines["autonomous"].decide(unseen).verdict == "deny"
    # ... but a value the preview does show must still meet the condition
    closed = request.model_copy(update={"proposed": {"tms_open_weight_dispute": {"status": "closed"}}})
    assert engines["shadow"].decide(closed).verdict == "deny"


def test_the_service_sets_modes_for_known_classes_and_the_next_decision_uses_it(registry, make_request) -> None:
    service = PolicyService(PolicyEngine(load_default_policy(), registry, autonomy=AutonomyStore(":memory:")),
                            ApprovalStore(":memory:"))
    request = make_request("tms_open_weight_dispute", DISPUTE, observations=READ)
    assert service.authorize(request).verdict == "propose"
    with pytest.raises(AuthError):
        service.set_mode("lost_parcel", "autonomous", identity=APPROVER, reason="x")  # auth before class
    with pytest.raises(AutonomyError, match="unknown exception class 'lost_parcel'"):
        service.set_mode("lost_parcel", "autonomous", identity=ADMIN, reason="x")
    change = service.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="gates passed")
    assert (change.from_mode, change.to_mode, change.actor) == ("shadow", "autonomous", "ada")
    assert service.authorize(request).verdict == "allow"
    status = {s.exception_type: s for s in service.autonomy_status()}
    assert status["weight_mismatch"].mode == "autonomous" and status["weight_mismatch"].last_change == change
    assert status["damage_claim"].mode == "shadow" and status["damage_claim"].last_change.actor == POLICY_ACTOR
    without_store = PolicyService(PolicyEngine(load_default_policy(), registry), ApprovalStore(":memory:"))
    with pytest.raises(AutonomyError, match="no autonomy store"):
        without_store.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="x")
    assert {s.mode for s in without_store.autonomy_status()} == {Mode.shadow}


def test_a_change_judged_on_a_stale_mode_records_nothing() -> None:
    """`expected`: the mode the gates judged the class in; changed meanwhile, nothing is recorded."""
    store = AutonomyStore(":memory:")
    store.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="test")
    store.set_mode("weight_mismatch", "supervised", identity=ADMIN, reason="admin was faster")
    assert store.demote("weight_mismatch", reason="gates", expected="autonomous") is None
    assert store.mode("weight_mismatch") == Mode.supervised
    with pytest.raises(AutonomyError, match="no longer autonomous"):
        store.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="x", expected="autonomous")
    assert store.demote("weight_mismatch", reason="gates", expected="supervised").to_mode == Mode.shadow


def test_a_field_missing_from_a_preview_waives_only_that_read(registry, make_request) -> None:
    """In shadow mode the unknown field of a proposed write's preview passes, but the reads
    listed after it are still checked."""
    data = load_default_policy().model_dump(mode="json")
    data["classes"]["weight_mismatch"]["tools"]["wms_request_rescan"]["reads"] = {
        "tms_open_weight_dispute.status": {"one_of": ["open"]},
        "wms_get_shipment.scale_check": {"one_of": ["failed"]}}
    store = AutonomyStore(":memory:")
    store.set_mode("weight_mismatch", Mode.shadow, identity=ADMIN, reason="test")
    engine = PolicyEngine(PolicyConfig.model_validate(data), registry, autonomy=store)
    request = make_request("wms_request_rescan", {"shipment_id": "SHP-1", "reason": "dispute opened"},
                           proposed={"tms_open_weight_dispute": {"shipment_id": "SHP-1"}},
                           observations={"wms_get_shipment": {"scale_check": "failed"}})
    assert engine.decide(request).verdict == "propose"
    passed = request.model_copy(update={"observations": {"wms_get_shipment": {"scale_check": "passed"}}})
    decision = engine.decide(passed)
    assert decision.verdict == "deny" and "wms_get_shipment.scale_check must be one of" in decision.reasons[0]
