"""Limits by business entity, counted across cases in the durable ledger, and the records a case
read having to belong together (hole 4 of issue 19)."""

from __future__ import annotations

import pytest

from opsagent.policy import PolicyConfig, PolicyEngine, SpendLedger, ToolCallRequest, load_default_policy
from tests.fakes.autonomy import promoted

INVOICE, SHIPMENT, TICKET = "INV-00000001", "SHP-00000001", "TKT-00000001"


def _reads(claim: float = 90.0, *, ticket_status: str = "open", ticket_invoice: str = INVOICE,
           invoice_shipment: str = SHIPMENT) -> dict:
    return {
        "tms_get_tracking": {"shipment_id": SHIPMENT, "damage_reported": "yes"},
        "tkt_get_ticket": {"ticket_id": TICKET, "status": ticket_status, "claim_amount": claim,
                           "entities": {"invoice_id": ticket_invoice, "shipment_id": SHIPMENT}},
        "erp_get_invoice": {"invoice_id": INVOICE, "open_balance": 5000.0, "shipment_id": invoice_shipment},
    }


def _credit(case: int, amount: float = 90.0, **reads) -> ToolCallRequest:
    return ToolCallRequest(
        case_id=f"case-{case}", exception_type="damage_claim", step=4, tool="erp_issue_credit",
        args={"invoice_id": INVOICE, "amount": amount, "reason": "damaged in transit"},
        entities={"shipment_id": SHIPMENT, "invoice_id": INVOICE, "ticket_id": TICKET},
        observations=_reads(amount, **reads))


@pytest.fixture
def engine(platform, tmp_path):
    config = load_default_policy()
    return PolicyEngine(config, platform.registry(), ledger=SpendLedger(tmp_path / "ledger.sqlite"),
                        autonomy=promoted(config))


def test_eleven_small_credits_on_one_invoice_do_not_add_up_to_990_eur_unapproved(engine):
    """Each 90 EUR credit is under the 100 EUR per-action line; eleven cases on one invoice were
    990 EUR without a human. Now the second one on that invoice that day is held."""
    verdicts = []
    for case in range(11):
        decision = engine.authorize(_credit(case))
        verdicts.append(decision.verdict)
        if decision.permit is not None:
            engine.settle(decision.permit, executed=True)
    assert verdicts == ["allow"] + ["require_approval"] * 10
    held = engine.authorize(_credit(99))
    assert "daily spend on erp_issue_credit for invoice_id=INV-00000001" in held.reasons[0]
    assert engine.ledger.spent(tool="erp_issue_credit") == 90.0
    other = engine.authorize(_credit(100).model_copy(update={
        "args": {"invoice_id": "INV-00000002", "amount": 90.0, "reason": "x"},
        "entities": {"shipment_id": SHIPMENT, "invoice_id": "INV-00000002", "ticket_id": TICKET},
        "observations": {**_reads(), "tkt_get_ticket": {**_reads()["tkt_get_ticket"],
                                                        "entities": {"invoice_id": "INV-00000002"}},
                         "erp_get_invoice": {**_reads()["erp_get_invoice"], "invoice_id": "INV-00000002"}}}))
    assert other.verdict == "allow"  # another invoice has its own budget


def test_the_entity_count_survives_a_restart_of_the_policy(engine, platform, tmp_path):
    first = engine.authorize(_credit(1))
    engine.settle(first.permit, executed=True)
    config = load_default_policy()
    again = PolicyEngine(config, platform.registry(), ledger=SpendLedger(tmp_path / "ledger.sqlite"),
                         autonomy=promoted(config))
    assert again.authorize(_credit(2)).verdict == "require_approval"


def test_an_approved_credit_past_the_entity_limit_runs(engine):
    engine.settle(engine.authorize(_credit(1)).permit, executed=True)
    held = engine.authorize(_credit(2))
    approved = engine.authorize(_credit(2), approved_digest=held.args_digest, approved_by="bob")
    assert approved.verdict == "allow" and approved.permit is not None


@pytest.mark.parametrize(("reads", "why"), [
    ({"ticket_status": "resolved"}, "tkt_get_ticket.status"),
    ({"ticket_invoice": "INV-99999999"}, "do not belong together"),
    ({"invoice_shipment": "SHP-99999999"}, "do not belong together"),
])
def test_the_ticket_must_be_open_and_the_records_related(engine, reads, why):
    decision = engine.authorize(_credit(1, **reads))
    assert decision.verdict == "deny" and why in decision.reasons[0]


def test_a_missing_related_read_denies(engine):
    request = _credit(1)
    observations = {k: v for k, v in request.observations.items() if k != "erp_get_invoice"}
    decision = engine.authorize(request.model_copy(update={"observations": observations}))
    assert decision.verdict == "deny"


def test_entity_limits_need_a_named_entity(platform):
    text = """
classes:
  damage_claim:
    initial_mode: autonomous
    tools:
      erp_issue_credit:
        risk: low
        spend: {arg: amount, per_entity: {arg: invoice_id, total: 150}}
"""
    config = PolicyConfig.from_text(text)
    engine = PolicyEngine(config, platform.registry(), autonomy=promoted(config))
    ok = engine.authorize(_credit(1, 100))
    assert ok.verdict == "allow"
    engine.settle(ok.permit, executed=True)
    assert engine.authorize(_credit(2, 60)).verdict == "deny"  # 160 > 150 on this invoice, ever
    missing = _credit(3).model_copy(update={"args": {"amount": 10.0, "reason": "x"}})
    assert engine.authorize(missing).verdict == "deny"


def test_an_entity_daily_limit_counts_only_that_utc_day(platform, tmp_path):
    """Yesterday's credit on the invoice does not count against today's 100 EUR a day on it."""
    config = load_default_policy()
    now = [1_780_000_000.0 - 1_780_000_000.0 % 86_400 + 86_400 - 60]  # a minute before UTC midnight
    engine = PolicyEngine(config, platform.registry(), ledger=SpendLedger(tmp_path / "ledger.sqlite"),
                          autonomy=promoted(config), clock=lambda: now[0])
    engine.settle(engine.authorize(_credit(1)).permit, executed=True)
    assert engine.authorize(_credit(2)).verdict == "require_approval"  # same day: 180 > 100
    now[0] += 120  # the next UTC day
    assert engine.authorize(_credit(3)).verdict == "allow"


def test_an_entity_limit_counts_only_its_own_tools_spend(engine):
    """An approved 1,500 EUR refund of the invoice (another tool, another class) is not counted
    against the credits' 100 EUR a day on that invoice."""
    refund = ToolCallRequest(
        case_id="case-r", exception_type="duplicate_invoice", step=2, tool="erp_issue_refund",
        args={"invoice_id": INVOICE, "amount": 1500.0, "reason": "paid twice"},
        entities={"invoice_id": INVOICE},
        observations={"erp_get_invoice": {"invoice_id": INVOICE, "duplicate_check": "duplicate",
                                          "status": "paid", "open_balance": 5000.0}})
    held = engine.authorize(refund)
    assert held.verdict == "require_approval"  # a refund is high risk
    approved = engine.authorize(refund, approved_digest=held.args_digest, approved_by="bob")
    assert approved.verdict == "allow"
    engine.settle(approved.permit, executed=True)
    assert engine.ledger.spent(tool="erp_issue_refund") == 1500.0
    assert engine.authorize(_credit(1)).verdict == "allow"
