"""address_rejected: the carrier could not deliver to the consignee address (TMS, ERP, ticketing).

Resolved: the ERP's address of record is verified, so correct the shipment's address to it.
Escalated: the address of record is unverified (and is the rejected one): only the customer can
say where the parcel goes, so customer service takes the ticket.
"""

from __future__ import annotations

from datetime import timedelta

from opsagent.evals.catalogue._common import Draw, describe, events, read, ticket, ticketed_gold, write
from opsagent.evals.catalogue._model import ExceptionClass, Planted, StateAssertion, Variant
from opsagent.tools.platform.scenarios import AdminWrite, company, parcel, scales_write

TEAM = "customer_service"
_TEMPLATES = [
    "{carrier} couldn't deliver {sid} - address rejected ({why}). Customer {cid}. Can we fix the address and "
    "get it out again? {filler}",
    "Address problem on {sid}: carrier says '{why}'. Parcel is sitting at the depot. {filler}",
    "Hi, shipment {sid} for {name} came back as undeliverable, {carrier} rejected the address. {filler}",
    "{sid} / {cid}: delivery failed, address rejected by {carrier}. Please correct and re-send. {filler}",
    "Carrier exception ADDRESS_REJECTED on {sid} ({carrier}, tracking {tracking}). {filler}",
    "pls check address for {name} ({cid}), {carrier} bounced {sid}: {why}. {filler}",
]


def _broken(d: Draw, good: dict) -> tuple[dict, str]:
    """The address as printed on the label, with the mistake the carrier rejected it for."""
    bad = {k: good[k] for k in ("street", "postcode", "city", "country")}
    kind = d.rng.choice(["postcode", "house_number", "street"])
    if kind == "postcode":
        digits = list(bad["postcode"])
        i = d.rng.randrange(2, len(digits))
        digits[i] = str((int(digits[i]) + d.rng.randint(1, 9)) % 10)
        bad["postcode"] = "".join(digits)
        return bad, f"postcode {bad['postcode']} does not match {bad['city']}"
    if kind == "house_number":
        bad["street"] = bad["street"].rsplit(" ", 1)[0]
        return bad, "house number missing"
    name, number = bad["street"].rsplit(" ", 1)
    bad["street"] = f"{name[:-3]}{name[-2]}{name[-3]}{name[-1]} {number}"
    return bad, f"street not found in {bad['postcode']}"


def _build(d: Draw) -> Planted:
    verified = d.variant == "correct_from_erp"
    sid, cid, tid = d.ids.shipment(), d.ids.customer(), d.ids.ticket()
    customer = company(d.rng, cid, verified=verified)
    wms, tms = parcel(d.rng, sid, status="exception")
    wms["customer_id"] = cid
    label, why = _broken(d, customer)
    if not verified:
        customer.update(label)  # the order took the address from the customer master: same mistake
    address = {"shipment_id": sid, "name": customer["name"], **label, "validation": "rejected",
               "rejection_reason": why, "updated_at": d.time(1)}
    scans = events(sid, d.when - timedelta(days=3), [
        ("LABEL_CREATED", wms["site"], 0, ""), ("PICKED_UP", wms["site"], 5, ""),
        ("HUB_SCAN", "depot", 14, ""), ("ADDRESS_REJECTED", label["city"], 20, why)])
    entities = {"shipment_id": sid, "customer_id": cid, "ticket_id": tid}
    text = describe(d.rng, _TEMPLATES, sid=sid, cid=cid, carrier=tms["carrier"], why=why,
                    name=customer["name"], tracking=tms["tracking_number"])
    setup = [scales_write(), AdminWrite(system="wms", route="shipments", records=[wms]),
             AdminWrite(system="tms", route="shipments", records=[tms]),
             AdminWrite(system="tms", route="addresses", records=[address]),
             AdminWrite(system="tms", route="tracking-events", records=scans),
             AdminWrite(system="erp", route="customers", records=[customer]),
             ticket(d, tid, text, entities)]
    fix = {k: customer[k] for k in ("street", "postcode", "city", "country")}
    where = {"shipment_id": sid}
    if verified:
        outcome, reason = "resolved", "Corrected the address to the verified address of record."
        state = [StateAssertion(system="tms", table="addresses", where=where, count=1,
                                values={**fix, "validation": "valid"}),
                 StateAssertion(system="tms", table="shipments", where=where,
                                values={"status": "in_transit"})]
    else:
        outcome, reason = "escalated", "Address of record is unverified; customer must confirm it."
        state = [StateAssertion(system="tms", table="addresses", where=where, count=1,
                                values={**label, "validation": "rejected"})]
    gold = ticketed_gold(
        outcome=outcome, ticket_id=tid, team=TEAM, reason=reason, assertions=state,
        reads=[read("tms_get_delivery_address", shipment_id=sid), read("erp_get_customer", customer_id=cid)],
        act=[write("tms_update_delivery_address", {"shipment_id": sid, **fix, "reason": reason},
                   ["shipment_id", "street", "postcode", "city", "country"])])
    return Planted(description=text, entities=entities, setup=setup, gold=gold,
                   facts={"rejected": label, "address_of_record": fix, "why": why, "verified": verified})


ADDRESS_REJECTED = ExceptionClass(
    name="address_rejected",
    summary="Carrier rejected the consignee address; correct it from the verified address of record.",
    systems=("tms", "erp", "tkt"),
    variants={
        "correct_from_erp": Variant(0.7, "resolved", note="ERP address verified: copy it to the shipment"),
        "unverified_address": Variant(0.3, "escalated",
                                      note="ERP address unverified and the same as rejected"),
    },
    identifying=("shipment_id", "customer_id", "ticket_id"),
    build=_build,
)
