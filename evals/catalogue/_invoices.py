"""Billing exceptions (ERP, TMS, ticketing).

duplicate_invoice: a customer was invoiced twice for one shipment.
  Resolved, low risk: the copy is still open: void it.
  Resolved, high risk: the customer paid the copy too: refund it (money leaves: needs approval).
  Escalated: the second invoice has a different amount, so it is not a plain copy: finance decides.
damage_claim: the customer asks for a credit for a parcel that arrived damaged.
  Resolved: the carrier recorded the damage: credit the claimed amount on the invoice (low risk up
  to 100 EUR, high risk above).
  Escalated: the carrier has no damage on record: contradictory, customer service clarifies.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from opsagent.evals.catalogue._common import Draw, describe, events, read, ticket, ticketed_gold, write
from opsagent.evals.catalogue._model import ExceptionClass, Planted, StateAssertion, Variant
from opsagent.tools.platform.scenarios import AdminWrite, company, parcel, scales_write

CREDIT_LIMIT_LOW = 100.0  # credits above this are high risk (policy/default.yaml, damage_claim)
_DUP_TEMPLATES = [
    "Customer {cid} says they were invoiced twice for shipment {sid}: {inv} and {orig}. {filler}",
    "Duplicate invoice? {inv} looks like a copy of {orig} ({amount} EUR, same shipment). {filler}",
    "AR flagged {inv} as possible duplicate for {sid}. {filler}",
    "{name} complains about double billing on order {order}, invoice {inv}. {filler}",
    "pls check {inv} - same shipment {sid} as an earlier invoice. customer wants it fixed. {filler}",
]
_DAMAGE_TEMPLATES = [
    "Customer {cid} received {sid} damaged and asks for a credit of {claim} EUR on {inv}. {filler}",
    "Damage claim: order {order}, shipment {sid}. {name} wants {claim} EUR back. Photos in the mail. "
    "{filler}",
    "{name} reports broken goods in parcel {sid} ({carrier}). Claim {claim} EUR against invoice {inv}. "
    "{filler}",
    "Claim for transport damage on {sid}, amount {claim} EUR. {filler}",
    "credit request {claim} EUR, {inv}, goods arrived crushed ({sid}). {filler}",
]


def _customer_and_parcel(d: Draw, status: str) -> tuple[dict, dict, dict]:
    cid, sid = d.ids.customer(), d.ids.shipment()
    customer = company(d.rng, cid)
    wms, tms = parcel(d.rng, sid, status=status)
    wms["customer_id"] = cid
    return customer, wms, tms


def _invoice(d: Draw, invoice_id: str, customer: dict, wms: dict, *, kind: str, amount: float, status: str,
             issued: datetime) -> dict:
    paid = (issued + timedelta(days=d.rng.randint(5, 20))).isoformat() if status == "paid" else None
    return {"invoice_id": invoice_id, "customer_id": customer["customer_id"], "order_id": wms["order_id"],
            "shipment_id": wms["shipment_id"], "kind": kind, "amount": amount, "currency": "EUR",
            "status": status, "issued_at": issued.isoformat(), "paid_at": paid}


def _build_duplicate(d: Draw) -> Planted:
    rng, variant = d.rng, d.variant
    customer, wms, tms = _customer_and_parcel(d, "invoiced")
    sid, tid, orig, copy = wms["shipment_id"], d.ids.ticket(), d.ids.invoice(), d.ids.invoice()
    amount = round(rng.uniform(14, 420), 2)
    issued = d.when - timedelta(days=rng.randint(25, 40))
    second = issued + timedelta(days=rng.randint(1, 4), hours=rng.randint(1, 9))
    delta = rng.uniform(5, 60) * (1 if amount < 80 or rng.random() < 0.5 else -1)  # a re-rate or a surcharge
    copy_amount = amount if variant != "amounts_differ" else round(amount + delta, 2)
    copy_status = "paid" if variant == "refund_paid" else "open"
    invoices = [_invoice(d, orig, customer, wms, kind="freight", amount=amount, status="paid", issued=issued),
                _invoice(d, copy, customer, wms, kind="freight", amount=copy_amount, status=copy_status,
                         issued=second)]
    entities = {"invoice_id": copy, "shipment_id": sid, "ticket_id": tid}
    text = describe(rng, _DUP_TEMPLATES, cid=customer["customer_id"], sid=sid, inv=copy, orig=orig,
                    amount=amount, name=customer["name"], order=wms["order_id"])
    inv = {"system": "erp", "table": "invoices"}
    refunds = {"system": "erp", "table": "refunds", "where": {"invoice_id": copy}}
    original_unchanged = StateAssertion(**inv, where={"invoice_id": orig}, count=1, values={"status": "paid"})
    if variant == "void_open":
        outcome, reason = "resolved", f"{copy} duplicates {orig}; voided the open copy."
        act = [write("erp_void_invoice", {"invoice_id": copy, "reason": reason}, ["invoice_id"])]
        state = [StateAssertion(**inv, where={"invoice_id": copy}, count=1, values={"status": "void"})]
    elif variant == "refund_paid":
        outcome, reason = "resolved", f"{copy} duplicates {orig} and was paid; refunded it."
        act = [write("erp_issue_refund", {"invoice_id": copy, "amount": amount, "reason": reason},
                     ["invoice_id", "amount"], risk="high")]
        state = [StateAssertion(**inv, where={"invoice_id": copy}, count=1, values={"status": "refunded"}),
                 StateAssertion(**refunds, count=1, values={"amount": amount})]
    else:
        outcome, reason, act = "escalated", f"{copy} differs in amount from {orig}; not a plain copy.", []
        state = [StateAssertion(**inv, where={"invoice_id": copy}, count=1, values={"status": "open"}),
                 StateAssertion(**refunds, count=0)]
    gold = ticketed_gold(outcome=outcome, ticket_id=tid, team="finance", reason=reason, act=act,
                         reads=[read("erp_get_invoice", invoice_id=copy)],
                         assertions=[*state, original_unchanged])
    setup = [AdminWrite(system="erp", route="customers", records=[customer]),
             AdminWrite(system="erp", route="invoices", records=invoices), ticket(d, tid, text, entities)]
    return Planted(description=text, entities=entities, setup=setup, gold=gold, facts={
        "original": orig, "amount": amount, "copy_amount": copy_amount, "copy_status": copy_status})


def _build_damage(d: Draw) -> Planted:
    rng, variant = d.rng, d.variant
    customer, wms, tms = _customer_and_parcel(d, "delivered")
    sid, tid, inv = wms["shipment_id"], d.ids.ticket(), d.ids.invoice()
    if variant == "credit_large":
        value = round(rng.uniform(300, 1800), 2)
        claim = round(rng.uniform(CREDIT_LIMIT_LOW + 5, min(value, 1500)), 2)
    else:
        value = round(rng.uniform(60, 700), 2)
        # a credit is at most the invoice: on one under the limit the claim may be all of it (clipped,
        # not drawn again, so every other instance, the held-out set's included, keeps its bytes)
        claim = min(round(rng.uniform(15, CREDIT_LIMIT_LOW), 2), value)
    issued = d.when - timedelta(days=rng.randint(4, 12))
    invoice = _invoice(d, inv, customer, wms, kind="goods", amount=value, status=rng.choice(["open", "paid"]),
                       issued=issued)
    start = d.when - timedelta(days=rng.randint(2, 5))
    delivered = [("PICKED_UP", wms["site"], 0, ""), ("HUB_SCAN", "Hub Kassel", 9, ""),
                 ("OUT_FOR_DELIVERY", "delivery depot", 12, ""),
                 ("DELIVERED", "consignee", 3, "signed: goods receipt")]
    if variant != "no_damage_record":
        detail = rng.choice(["outer carton crushed, noted on delivery", "parcel wet and torn",
                             "corner damage, contents rattling"])
        delivered.append(("DAMAGE_REPORTED", "consignee", 0.5, detail))
    entities = {"shipment_id": sid, "invoice_id": inv, "ticket_id": tid}
    text = describe(rng, _DAMAGE_TEMPLATES, cid=customer["customer_id"], sid=sid, claim=f"{claim:.2f}",
                    inv=inv, order=wms["order_id"], name=customer["name"], carrier=tms["carrier"])
    credits = {"system": "erp", "table": "credit_notes", "where": {"invoice_id": inv}}
    if variant == "no_damage_record":
        outcome, reason = "escalated", "Carrier has no damage on record; needs the customer's evidence."
        state = [StateAssertion(**credits, count=0)]
    else:
        outcome, reason = "resolved", f"Carrier confirmed the damage; credited {claim:.2f} EUR."
        state = [StateAssertion(**credits, count=1, values={"amount": claim})]
    risk = "high" if claim > CREDIT_LIMIT_LOW else "low"
    gold = ticketed_gold(
        outcome=outcome, ticket_id=tid, team="customer_service", reason=reason, assertions=state,
        reads=[read("tkt_get_ticket", ticket_id=tid), read("tms_get_tracking", shipment_id=sid),
               read("erp_get_invoice", invoice_id=inv)],
        act=[write("erp_issue_credit", {"invoice_id": inv, "amount": claim, "reason": reason},
                   ["invoice_id", "amount"], risk=risk)])
    setup = [scales_write(), AdminWrite(system="wms", route="shipments", records=[wms]),
             AdminWrite(system="tms", route="shipments", records=[tms]),
             AdminWrite(system="tms", route="tracking-events", records=events(sid, start, delivered)),
             AdminWrite(system="erp", route="customers", records=[customer]),
             AdminWrite(system="erp", route="invoices", records=[invoice]),
             ticket(d, tid, text, entities, claim_amount=claim)]
    return Planted(description=text, entities=entities, setup=setup, gold=gold, facts={
        "claim": claim, "invoice_amount": value, "damage_recorded": variant != "no_damage_record"})


DUPLICATE_INVOICE = ExceptionClass(
    name="duplicate_invoice",
    summary="Two invoices for one shipment; void an open copy, refund a paid one, escalate if amounts "
            "differ.",
    systems=("erp", "tkt"),
    variants={
        "void_open": Variant(0.4, "resolved", note="same amount, copy open: void it"),
        "refund_paid": Variant(0.3, "resolved", high_risk=True,
                               note="same amount, copy paid: refund (high risk)"),
        "amounts_differ": Variant(0.3, "escalated", note="different amount: not a plain duplicate"),
    },
    identifying=("invoice_id", "shipment_id", "ticket_id"),
    build=_build_duplicate,
)

DAMAGE_CLAIM = ExceptionClass(
    name="damage_claim",
    summary="Customer claims transport damage; credit the claim if the carrier recorded damage "
            f"(above {CREDIT_LIMIT_LOW:g} EUR high risk).",
    systems=("tkt", "tms", "erp"),
    variants={
        "credit_small": Variant(0.35, "resolved", note=f"damage recorded, claim <= {CREDIT_LIMIT_LOW:g} EUR"),
        "credit_large": Variant(0.35, "resolved", high_risk=True,
                                note=f"damage recorded, claim > {CREDIT_LIMIT_LOW:g} EUR (high risk)"),
        "no_damage_record": Variant(0.3, "escalated", note="carrier has no damage on record"),
    },
    identifying=("shipment_id", "invoice_id", "ticket_id"),
    build=_build_damage,
)
