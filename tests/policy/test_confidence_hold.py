"""`min_confidence`: in autonomous mode a write the planner was unsure of waits for a human."""

from __future__ import annotations

import pytest

from opsagent.policy import AutonomyStore, PolicyConfig, PolicyEngine, load_default_policy
from opsagent.policy.identity import Identity, Role

ADMIN = Identity(name="ada", roles=frozenset({Role.admin}))
READ = {"wms_get_shipment": {"shipment_id": "SHP-1", "scanned_weight_kg": 12.5, "scale_check": "passed"}}
DISPUTE = {"shipment_id": "SHP-1", "claimed_weight_kg": 12.5, "reason": "scale says 12.5"}


def _engine(registry, mode: str, floor: float | None) -> PolicyEngine:
    data = load_default_policy().model_dump(mode="json")
    data["classes"]["weight_mismatch"]["min_confidence"] = floor
    store = AutonomyStore(":memory:")
    store.set_mode("weight_mismatch", mode, identity=ADMIN, reason=f"test: {mode}")
    return PolicyEngine(PolicyConfig.model_validate(data), registry, autonomy=store)


@pytest.mark.parametrize(("confidence", "verdict"), [(0.95, "allow"), (0.8, "allow"), (0.79, "require_approval"),
                                                     (None, "require_approval")])
def test_an_autonomous_write_below_the_floor_or_of_unknown_confidence_is_held(
        registry, make_request, confidence, verdict) -> None:
    engine = _engine(registry, "autonomous", 0.8)
    decision = engine.authorize(make_request("tms_open_weight_dispute", DISPUTE, observations=READ,
                                             confidence=confidence))
    assert decision.verdict == verdict and (decision.permit is not None) == (verdict == "allow")
    if verdict == "require_approval":
        sure = "unknown" if confidence is None else f"{confidence:.2f}"
        assert decision.reasons[0] == (f"the planner's confidence in tms_open_weight_dispute is {sure}, "
                                       "below 0.80 for weight_mismatch: a human decides")


def test_reads_approvals_other_modes_and_classes_without_a_floor_are_not_held(registry, make_request) -> None:
    unsure = dict(observations=READ, confidence=0.1)
    engine = _engine(registry, "autonomous", 0.8)
    assert engine.decide(make_request("wms_get_shipment", confidence=0.1)).verdict == "allow"
    held = engine.authorize(make_request("tms_open_weight_dispute", DISPUTE, **unsure))
    approved = engine.authorize(make_request("tms_open_weight_dispute", DISPUTE, **unsure),
                                approved_digest=held.args_digest, approved_by="alice (apr-1)")
    assert (held.verdict, approved.verdict) == ("require_approval", "allow")
    for mode, verdict in (("supervised", "require_approval"), ("shadow", "propose")):
        decision = _engine(registry, mode, 0.8).decide(make_request("tms_open_weight_dispute", DISPUTE, **unsure))
        assert decision.verdict == verdict and "confidence" not in " ".join(decision.reasons)
    assert _engine(registry, "autonomous", None).decide(
        make_request("tms_open_weight_dispute", DISPUTE, **unsure)).verdict == "allow"


def test_the_floor_and_the_confidence_are_validated(make_request) -> None:
    data = load_default_policy().model_dump(mode="json")
    for bad in (0.0, 1.5):
        data["classes"]["weight_mismatch"]["min_confidence"] = bad
        with pytest.raises(ValueError, match="min_confidence"):
            PolicyConfig.model_validate(data)
    with pytest.raises(ValueError, match="confidence"):
        make_request("wms_get_shipment", confidence=1.2)
