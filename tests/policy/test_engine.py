"""The whole chain through PolicyEngine.decide, including failing closed."""

from __future__ import annotations

import pytest

from opsagent.policy import (
    DEFAULT_CHECKS,
    CheckResult,
    PolicyConfig,
    PolicyEngine,
    args_digest,
    load_default_policy,
)
from tests.fakes.autonomy import promoted

ALL_CHECKS = [
    "known_class", "allowlisted", "registered", "schema_valid", "constraints", "scope", "cross_record",
    "within_limits", "risk_tier", "autonomy_mode",
]
DISPUTE = {"shipment_id": "SHP-1", "claimed_weight_kg": 12.5, "reason": "scale says 12.5"}
READ = {"wms_get_shipment": {"shipment_id": "SHP-1", "scanned_weight_kg": 12.5, "scale_check": "passed"}}
ADJUST = {"shipment_id": "SHP-1", "billed_weight_kg": 12.5, "reason": "carrier accepted dispute"}


def test_low_risk_read_is_allowed(engine, make_request) -> None:
    decision = engine.decide(make_request("wms_get_shipment"))
    assert (decision.verdict, decision.risk) == ("allow", "low")
    assert decision.checks == ALL_CHECKS
    assert decision.policy_version == load_default_policy().version
    assert decision.args_digest == args_digest("wms_get_shipment", {"shipment_id": "SHP-1"})
    assert decision.reasons == ["wms_get_shipment is low risk for weight_mismatch",
                                "weight_mismatch is in autonomous mode"]
    assert decision.mode == "autonomous"


def test_low_risk_write_is_allowed(engine, make_request) -> None:
    assert engine.decide(make_request("tms_open_weight_dispute", DISPUTE, observations=READ)).verdict == "allow"


def test_high_risk_requires_approval(engine, make_request) -> None:
    decision = engine.decide(make_request("tms_adjust_billed_weight", ADJUST))
    assert (decision.verdict, decision.risk) == ("require_approval", "high")
    assert decision.checks == ALL_CHECKS
    assert "tms_adjust_billed_weight is high risk" in decision.reasons[0]


@pytest.mark.parametrize(
    ("overrides", "deciding_check", "reason"),
    [
        ({"exception_type": "lost_parcel"}, "known_class", "unknown exception class"),
        ({"tool": "tms_withdraw_weight_dispute", "args": {"dispute_id": "D-1"}}, "allowlisted", "not allowed"),
        ({"tool": "rm_rf", "args": {}}, "allowlisted", "not allowed"),
        ({"args": {}}, "schema_valid", "'shipment_id' is a required property"),
        ({"args": {"shipment_id": 1}}, "schema_valid", "is not of type 'string'"),
        ({"args": {"shipment_id": "SHP-1", "x": 1}}, "schema_valid", "'x' was unexpected"),
        ({"args": {"shipment_id": "S" * 100}}, "schema_valid", "is too long"),
        ({"args": {"shipment_id": "SHP-9"}}, "scope", "outside case"),
    ],
)
def test_denials(engine, make_request, overrides, deciding_check, reason) -> None:
    request = make_request("wms_get_shipment").model_copy(update=overrides)
    decision = engine.decide(request)
    assert (decision.verdict, decision.risk) == ("deny", None)
    assert decision.checks == ALL_CHECKS[: ALL_CHECKS.index(deciding_check) + 1]
    assert decision.mode == ("supervised" if deciding_check == "known_class" else "autonomous")
    assert reason in decision.reasons[0]


def test_constraint_denies_before_approval(engine, make_request) -> None:
    # a high-risk tool with an out-of-bounds value is denied, not sent for approval
    decision = engine.decide(make_request("tms_adjust_billed_weight", {**ADJUST, "billed_weight_kg": 1e6}))
    assert (decision.verdict, decision.checks[-1]) == ("deny", "constraints")


def test_value_dependent_risk(registry, make_request) -> None:
    config = PolicyConfig.from_yaml(
        """
classes:
  weight_mismatch:
    initial_mode: autonomous
    tools:
      tms_adjust_billed_weight:
        risk: low
        high_if: [{arg: billed_weight_kg, above: 50}]
"""
    )
    engine = PolicyEngine(config, registry)
    low = engine.decide(make_request("tms_adjust_billed_weight", {**ADJUST, "billed_weight_kg": 50}))
    high = engine.decide(make_request("tms_adjust_billed_weight", {**ADJUST, "billed_weight_kg": 50.5}))
    assert (low.verdict, low.risk) == ("allow", "low")
    assert (high.verdict, high.risk) == ("require_approval", "high")
    assert "billed_weight_kg=50.5 > 50" in high.reasons[0]


class _ExplodingRegistry:
    def get(self, name: str):
        raise RuntimeError("registry backend down")


def test_crashing_check_fails_closed(make_request) -> None:
    engine = PolicyEngine(load_default_policy(), _ExplodingRegistry())
    decision = engine.decide(make_request("wms_get_shipment"))
    assert (decision.verdict, decision.risk) == ("deny", None)
    assert decision.checks[-1] == "registered"
    assert decision.reasons == ["check registered failed: RuntimeError: registry backend down"]


def test_custom_check_that_raises_fails_closed(registry, make_request) -> None:
    def boom(request, ctx):
        raise ValueError("bug")

    engine = PolicyEngine(load_default_policy(), registry, checks=[*DEFAULT_CHECKS[:2], boom, *DEFAULT_CHECKS[2:]])
    decision = engine.decide(make_request("wms_get_shipment"))
    assert decision.verdict == "deny" and decision.checks == ["known_class", "allowlisted", "boom"]
    assert "check boom failed: ValueError: bug" in decision.reasons[0]


def test_a_check_cannot_short_circuit_to_allow(registry, make_request) -> None:
    def sneaky(request, ctx):
        return CheckResult("allow", "trust me")  # type: ignore[arg-type]

    engine = PolicyEngine(load_default_policy(), registry, checks=[sneaky, *DEFAULT_CHECKS])
    decision = engine.decide(make_request("rm_rf", {}))
    assert decision.verdict == "deny" and "invalid block" in decision.reasons[0]


def test_chain_without_risk_assessment_denies(registry, make_request) -> None:
    engine = PolicyEngine(load_default_policy(), registry, checks=DEFAULT_CHECKS[:-1])
    decision = engine.decide(make_request("wms_get_shipment"))
    assert decision.verdict == "deny" and "no check assessed the risk" in decision.reasons[0]


def test_first_block_wins(registry, make_request) -> None:
    def approve_everything(request, ctx):
        return CheckResult("require_approval", "always ask", "high")

    config = load_default_policy()
    engine = PolicyEngine(config, registry, checks=[approve_everything, *DEFAULT_CHECKS], autonomy=promoted(config))
    decision = engine.decide(make_request("rm_rf", {}))
    assert (decision.verdict, decision.reasons[0]) == ("require_approval", "always ask")
    # in shadow mode a tool the registry does not know counts as a write: proposed, never run
    decision = PolicyEngine(config, registry, checks=[approve_everything, *DEFAULT_CHECKS]).decide(
        make_request("rm_rf", {}))
    assert (decision.verdict, decision.risk, decision.permit) == ("propose", "high", None)


def test_args_digest_is_canonical() -> None:
    assert args_digest("t", {"a": 1, "b": [1, 2]}) == args_digest("t", {"b": [1, 2], "a": 1})
    assert args_digest("t", {"a": 1}) != args_digest("t", {"a": 2})
    assert args_digest("t", {"a": 1}) != args_digest("u", {"a": 1})


def test_allowed_tools(engine) -> None:
    assert engine.allowed_tools("weight_mismatch") == [
        "wms_get_shipment",
        "tms_get_shipment",
        "tms_open_weight_dispute",
        "wms_request_rescan",
        "tms_adjust_billed_weight",
    ]
    assert engine.allowed_tools("lost_parcel") == []


def test_allowed_tools_skips_unregistered(registry) -> None:
    config = PolicyConfig.from_yaml(
        "classes: {weight_mismatch: {tools: {ghost: {risk: low}, wms_get_shipment: {risk: low}}}}"
    )
    assert PolicyEngine(config, registry).allowed_tools("weight_mismatch") == ["wms_get_shipment"]


def test_problems(registry, engine) -> None:
    # the hand-built registry has weight_mismatch's tools; the whole default policy is checked
    # against the real platform in test_default_policy_matches_the_platform_tools
    assert [p for p in engine.problems() if p.startswith("weight_mismatch:")] == []
    config = PolicyConfig.from_yaml(
        "classes: {c: {tools: {ghost: {risk: low}, wms_get_shipment: {risk: low, scope: [shipment]}}}}"
    )
    assert PolicyEngine(config, registry).problems() == [
        "c: tool 'ghost' is not in the registry",
        "c: wms_get_shipment has no argument 'shipment'",
    ]


def test_default_policy_matches_the_platform_tools(platform) -> None:
    """Every tool and argument the shipped policy names exists on the sandbox platform."""
    from opsagent.policy import PolicyEngine, load_default_policy

    engine = PolicyEngine(load_default_policy(), platform.registry())
    assert engine.problems() == []
    assert "tms_open_weight_dispute" in engine.allowed_tools("weight_mismatch")
