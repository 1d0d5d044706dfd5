"""The default policy for the catalogue's classes: the gold passes (high-risk steps held for
approval), and writes that do not follow from what the case read are denied."""

from __future__ import annotations

import itertools

import pytest

from opsagent.evals.catalogue import GoldAction, Instance, make, plant
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.records import ToolCallRequest
from tests.fakes.autonomy import promoted

_SEEDS = itertools.count(90_000)


@pytest.fixture(scope="module")
def engine(registry) -> PolicyEngine:
    """The shipped policy with its classes promoted to autonomous (they ship in shadow)."""
    config = load_default_policy()
    return PolicyEngine(config, registry, autonomy=promoted(config))


@pytest.fixture
def case(platform, read, engine):
    """`case(class, variant)` -> (instance, observations of its gold reads, decide(tool, args))."""

    def make_case(name: str, variant: str):
        inst = next(i for i in make(name, seed=next(_SEEDS), count=4) if i.variant == variant)
        plant([inst], platform)
        seen = {a.tool: read(a.tool, **a.args).body for a in inst.gold.actions if not a.writes and a.expect_ok}

        def decide(tool: str, args: dict, observations: dict | None = None) -> tuple[str, str]:
            decision = engine.decide(ToolCallRequest(
                case_id="c-1", exception_type=name, step=9, tool=tool, args=args, entities=inst.entities,
                observations=seen if observations is None else observations))
            return decision.verdict, decision.reasons[0]

        return inst, seen, decide

    return make_case


def _gold(inst: Instance, tool: str) -> GoldAction:
    return next(a for a in inst.gold.actions if a.tool == tool)


def test_credits_follow_the_claim_the_carrier_record_and_the_limit(case):
    inst, _, decide = case("damage_claim", "credit_small")
    credit = _gold(inst, "erp_issue_credit").args
    assert decide("erp_issue_credit", credit)[0] == "allow"
    verdict, why = decide("erp_issue_credit", {**credit, "amount": round(credit["amount"] + 1, 2)})
    assert verdict == "deny" and "claim_amount" in why
    assert decide("erp_issue_credit", credit, observations={})[0] == "deny"  # nothing read yet

    inst, _, decide = case("damage_claim", "credit_large")
    assert decide("erp_issue_credit", _gold(inst, "erp_issue_credit").args)[0] == "require_approval"

    inst, seen, decide = case("damage_claim", "no_damage_record")
    claim = {"invoice_id": inst.entities["invoice_id"], "amount": inst.facts["claim"], "reason": "claim"}
    verdict, why = decide("erp_issue_credit", claim)
    assert verdict == "deny" and "damage_reported" in why


def test_invoices_are_voided_or_refunded_only_as_duplicates(case):
    inst, _, decide = case("duplicate_invoice", "amounts_differ")
    assert decide("erp_void_invoice", {"invoice_id": inst.entities["invoice_id"], "reason": "dup"})[0] == "deny"
    inst, seen, decide = case("duplicate_invoice", "refund_paid")
    refund = _gold(inst, "erp_issue_refund").args
    assert decide("erp_issue_refund", refund)[0] == "require_approval"
    too_much = {**refund, "amount": seen["erp_get_invoice"]["open_balance"] + 5}
    assert decide("erp_issue_refund", too_much)[0] == "deny"


def test_books_addresses_and_tickets_need_the_evidence(case):
    inst, seen, decide = case("stock_count_mismatch", "recount")
    books = {"site": inst.entities["site"], "sku": inst.entities["sku"],
             "book_quantity": seen["wms_get_stock"]["quantity"], "reason": "to the WMS"}
    verdict, why = decide("erp_adjust_book_quantity", books)
    assert verdict == "deny" and "count_status" in why

    inst, seen, decide = case("address_rejected", "unverified_address")
    fix = {k: seen["erp_get_customer"][k] for k in ("street", "postcode", "city", "country")}
    args = {"shipment_id": inst.entities["shipment_id"], **fix, "reason": "from the ERP"}
    assert decide("tms_update_delivery_address", args)[0] == "deny"

    inst, seen, decide = case("tracking_stuck", "request_trace")
    close = {"ticket_id": inst.entities["ticket_id"], "resolution": "traced"}
    assert decide("tkt_resolve_ticket", close)[0] == "deny"  # not before the trace exists
    traced = {**seen, "tms_request_trace": {"trace_id": "TR-1", "status": "open"}}
    assert decide("tkt_resolve_ticket", close, observations=traced)[0] == "allow"
    wrong = {"ticket_id": inst.entities["ticket_id"], "team": "finance", "note": "lost?"}
    assert decide("tkt_assign_ticket", wrong)[0] == "deny"
    assert decide("tkt_assign_ticket", {**wrong, "team": "carrier_relations"})[0] == "allow"
