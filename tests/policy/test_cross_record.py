"""Cross-record checks: arguments compared with what the case read from the systems of record."""

from __future__ import annotations

import pytest
import yaml

from opsagent.errors import ConfigError
from opsagent.policy import PolicyConfig, PolicyEngine

DISPUTE = {"shipment_id": "SHP-1", "claimed_weight_kg": 12.5, "reason": "scale says 12.5"}
WMS = {"shipment_id": "SHP-1", "scanned_weight_kg": 12.5, "scale_check": "passed"}


@pytest.mark.parametrize(("observations", "verdict", "why"), [
    ({"wms_get_shipment": WMS}, "allow", "low risk"),
    ({"wms_get_shipment": WMS, "tms_get_shipment": {"billed_weight_kg": 20}}, "allow", "low risk"),
    ({}, "deny", "needs wms_get_shipment.scale_check, but the case has not read wms_get_shipment "
                 "(read wms_get_shipment first)"),
    ({"wms_get_shipment": None}, "deny", "read wms_get_shipment first"),
    ({"tms_get_shipment": {"billed_weight_kg": 20}}, "deny", "read wms_get_shipment first"),
    ({"wms_get_shipment": {**WMS, "scale_check": "failed"}}, "deny",
     "wms_get_shipment.scale_check must be one of ['passed'], got 'failed'"),
    ({"wms_get_shipment": {**WMS, "scanned_weight_kg": 11.0}}, "deny",
     "claimed_weight_kg must equal wms_get_shipment.scanned_weight_kg (11.0), got 12.5"),
    ({"wms_get_shipment": {"scale_check": "passed"}}, "deny",
     "the result of wms_get_shipment has no scanned_weight_kg"),
    # a record read without the field the policy needs: outside shadow mode, a missing field
    # denies (only a shadow proposal's preview may lack one)
    ({"wms_get_shipment": {"shipment_id": "SHP-1", "scanned_weight_kg": 12.5}}, "deny",
     "needs wms_get_shipment.scale_check, but the result of wms_get_shipment has no scale_check"),
])
def test_default_dispute_must_claim_the_weight_scanned_on_a_checked_scale(
    engine, make_request, observations, verdict, why
) -> None:
    decision = engine.decide(make_request("tms_open_weight_dispute", DISPUTE, observations=observations))
    assert decision.verdict == verdict and why in decision.reasons[0]
    if verdict == "deny":
        assert decision.checks[-1] == "cross_record"


def test_scope_is_checked_before_records(engine, make_request) -> None:
    decision = engine.decide(make_request("tms_open_weight_dispute", {**DISPUTE, "shipment_id": "SHP-2"}))
    assert decision.checks[-1] == "scope" and "outside case" in decision.reasons[0]


@pytest.mark.parametrize(("amount", "invoice", "verdict", "why"), [
    (100, {"open_amount": 100}, "allow", ""),
    (100.01, {"open_amount": 100}, "deny",
     "amount must be <= billing_get_invoice.open_amount (100), got 100.01"),
    (50, {"open_amount": "100"}, "deny", "which is not a number ('100')"),
    (50, {"open": 100}, "deny", "the result of billing_get_invoice has no open_amount"),
    (50, [100], "deny", "has no open_amount"),
])
def test_a_credit_may_not_exceed_the_open_amount(billing_policy, registry, credit, amount, invoice, verdict,
                                                 why) -> None:
    engine = PolicyEngine(billing_policy(), registry)
    decision = engine.decide(credit(amount=amount, observations={"billing_get_invoice": invoice}))
    assert decision.verdict == verdict and why in decision.reasons[0]


def test_nested_fields_and_every_comparison(registry, credit) -> None:
    config = PolicyConfig.from_yaml("""
classes:
  billing_dispute:
    initial_mode: autonomous
    tools:
      billing_get_invoice: {risk: low}
      billing_issue_credit:
        risk: low
        constraints:
          amount: {gt_read: billing_get_invoice.totals.floor, lt_read: billing_get_invoice.totals.open}
          currency: {eq_read: billing_get_invoice.currency}
""")
    engine = PolicyEngine(config, registry)
    invoice = {"totals": {"floor": 10, "open": 100}, "currency": "EUR"}

    def verdict(amount, **changes):
        read = {"billing_get_invoice": {**invoice, **changes}}
        return engine.decide(credit(amount=amount, observations=read))

    assert verdict(50).verdict == "allow"
    assert "must be > billing_get_invoice.totals.floor (10), got 10" in verdict(10).reasons[0]
    assert "must be < billing_get_invoice.totals.open (100), got 100" in verdict(100).reasons[0]
    assert "currency must equal billing_get_invoice.currency ('USD'), got 'EUR'" \
        in verdict(50, currency="USD").reasons[0]
    assert "has no totals.open" in verdict(50, totals={"floor": 1}).reasons[0]


@pytest.mark.parametrize("ref", ["scanned_weight_kg", "wms_get_shipment.", ".x", "a..b"])
@pytest.mark.parametrize("where", ["constraints", "reads"])
def test_malformed_read_references_are_config_errors(ref, where) -> None:
    tool = {"risk": "low", "constraints": {"x": {"eq_read": ref}}} if where == "constraints" else {
        "risk": "low", "reads": {ref: {"one_of": [1]}}}
    with pytest.raises(ConfigError, match="tool.field"):
        PolicyConfig.from_yaml(yaml.safe_dump({"classes": {"c": {"tools": {"t": tool}}}}))


def test_problems_flag_reads_the_class_can_never_make(registry) -> None:
    config = PolicyConfig.from_yaml("""
classes:
  weight_mismatch:
    tools:
      tms_open_weight_dispute:
        risk: low
        reads: {wms_get_shipment.scale_check: {one_of: [passed]}}
        constraints: {claimed_weight_kg: {le_read: tms_get_shipment.billed_weight_kg}}
      tms_get_shipment: {risk: low}
""")
    assert PolicyEngine(config, registry).problems() == [
        "weight_mismatch: tms_open_weight_dispute compares with wms_get_shipment.scale_check, "
        "but wms_get_shipment is not allowed"
    ]


def test_a_read_may_be_compared_with_another_read(registry, make_request) -> None:
    """`reads` take the same comparisons as arguments: here the scanned weight must not be above
    the billed one."""
    config = PolicyConfig.from_yaml("""
classes:
  weight_mismatch:
    initial_mode: autonomous
    tools:
      tms_open_weight_dispute:
        risk: low
        reads: {wms_get_shipment.scanned_weight_kg: {le_read: tms_get_shipment.billed_weight_kg}}
""")
    engine = PolicyEngine(config, registry)

    def decide(scanned):
        return engine.decide(make_request("tms_open_weight_dispute", DISPUTE, observations={
            "wms_get_shipment": {**WMS, "scanned_weight_kg": scanned},
            "tms_get_shipment": {"billed_weight_kg": 20}}))

    assert decide(12.5).verdict == "allow"
    assert decide(20).verdict == "allow"
    over = decide(25)
    assert over.verdict == "deny" and over.checks[-1] == "cross_record"
    assert "wms_get_shipment.scanned_weight_kg must be <= tms_get_shipment.billed_weight_kg (20), got 25" \
        in over.reasons[0]


def test_a_related_record_not_read_denies(registry, make_request) -> None:
    config = PolicyConfig.from_yaml("""
classes:
  weight_mismatch:
    initial_mode: autonomous
    tools:
      tms_open_weight_dispute:
        risk: low
        related: {tms_get_shipment.shipment_id: shipment_id}
""")
    engine = PolicyEngine(config, registry)

    def decide(observations):
        return engine.decide(make_request("tms_open_weight_dispute", DISPUTE, observations=observations))

    assert decide({"tms_get_shipment": {"shipment_id": "SHP-1"}}).verdict == "allow"
    for observations, why in (({"wms_get_shipment": WMS}, "needs tms_get_shipment.shipment_id, but"),
                              ({"tms_get_shipment": {"billed_weight_kg": 20}}, "has no shipment_id"),
                              ({"tms_get_shipment": {"shipment_id": "SHP-2"}}, "do not belong together")):
        decision = decide(observations)
        assert decision.verdict == "deny" and decision.checks[-1] == "cross_record"
        assert why in decision.reasons[0], decision.reasons
