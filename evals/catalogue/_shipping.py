"""Shipping exceptions (TMS, WMS, ERP, ticketing).

missed_pickup: the carrier did not come for a scheduled pickup.
  Resolved: book the carrier's next available slot. Escalated: the carrier recorded the pickup as
  completed: contradictory, carrier relations sorts it out with the carrier.
label_cancelled_order: a shipping label exists for an order that was cancelled.
  Resolved: void the label (not yet picked up). Escalated: the carrier already has the parcel: it
  needs an intercept, carrier relations.
customs_documents_missing: customs holds an international parcel for a missing commercial invoice.
  Resolved: submit the order's commercial invoice from the ERP. Escalated: the ERP has none (a
  missing record): the customs team must raise one.
"""

from __future__ import annotations

from datetime import timedelta

from opsagent.evals.catalogue._common import Draw, describe, events, read, ticket, ticketed_gold, write
from opsagent.evals.catalogue._model import ExceptionClass, Planted, StateAssertion, Variant
from opsagent.tools.platform.scenarios import TARIFFS, AdminWrite, company, parcel, scales_write

_PICKUP_TEMPLATES = [
    "{carrier} didn't show up for pickup {pid} at {site} yesterday ({window}), {parcels} parcels waiting. "
    "{filler}",
    "Missed pickup {pid} - dock {site} still full of {carrier} parcels. Please rebook. {filler}",
    "Pickup {pid} ({carrier}, {date}) was missed again?! Need a new slot asap. {filler}",
    "Driver no-show, pickup {pid}. {parcels} parcels for {carrier}. {filler}",
    "can someone reschedule {carrier} pickup {pid} for {site}? nobody came on {date}. {filler}",
]
_LABEL_TEMPLATES = [
    "Order {order} was cancelled but a {carrier} label exists for {sid}. Please void it. {filler}",
    "Label printed for cancelled order {order} ({sid}). {filler}",
    "Customer cancelled {order} after we printed the label ({carrier} {tracking}). {filler}",
    "Cancelled order {order} still has an active shipment {sid} - stop it please. {filler}",
    "{sid}: order {order} cancelled ({cancel}), label still active at {carrier}. {filler}",
]
_CUSTOMS_TEMPLATES = [
    "{sid} held at customs in {country}, commercial invoice missing. Order {order}. {filler}",
    "Customs hold on {sid} ({carrier} {tracking}): documents incomplete. {filler}",
    "{carrier} says shipment {sid} to {city} is stuck in customs - no commercial invoice. {filler}",
    "Export to {country}: {sid} / {order} held, customs wants the commercial invoice. {filler}",
    "pls send customs docs for {sid}, parcel is waiting at the border. {filler}",
]
_ABROAD = [("CH", "Zürich", "8005", "Hardturmstrasse 161"), ("GB", "London", "EC1V 9HX", "City Road 120"),
           ("NO", "Oslo", "0150", "Dronningens gate 8"), ("US", "New York", "10001", "W 34th St 250"),
           ("TR", "Istanbul", "34394", "Büyükdere Cd. 185")]


def _build_pickup(d: Draw) -> Planted:
    rng = d.rng
    pid, tid, site = d.ids.new("PU", 7, lead=7), d.ids.ticket(), rng.choice(["DUS", "HAM", "LEJ"])
    carrier = rng.choice(TARIFFS)[0]
    scheduled = (d.when - timedelta(days=1)).date()
    nxt = (scheduled + timedelta(days=rng.randint(2, 4))).isoformat()
    window = rng.choice(["08:00-10:00", "10:00-12:00", "14:00-16:00", "16:00-18:00"])
    done = d.variant == "carrier_says_collected"
    pickup = {"pickup_id": pid, "carrier": carrier, "site": site, "scheduled_date": scheduled.isoformat(),
              "time_window": window, "parcels": rng.randint(3, 60),
              "status": "completed" if done else "missed",
              "next_available_date": nxt, "reschedules": 0, "updated_at": d.time(0.5)}
    entities = {"pickup_id": pid, "ticket_id": tid}
    text = describe(rng, _PICKUP_TEMPLATES, carrier=carrier, pid=pid, site=site, window=window,
                    parcels=pickup["parcels"], date=pickup["scheduled_date"])
    where = {"system": "tms", "table": "pickups", "where": {"pickup_id": pid}, "count": 1}
    if done:
        outcome, reason = "escalated", "Carrier recorded the pickup as completed; ops says it was missed."
        state = [StateAssertion(**where, values={"status": "completed", "reschedules": 0})]
    else:
        outcome, reason = "resolved", f"Pickup missed; rebooked for the next slot {nxt}."
        state = [StateAssertion(**where, values={"status": "scheduled", "scheduled_date": nxt,
                                                 "reschedules": 1})]
    gold = ticketed_gold(
        outcome=outcome, ticket_id=tid, team="carrier_relations", reason=reason, assertions=state,
        reads=[read("tms_get_pickup", pickup_id=pid)],
        act=[write("tms_reschedule_pickup", {"pickup_id": pid, "pickup_date": nxt, "reason": reason},
                   ["pickup_id", "pickup_date"])])
    setup = [AdminWrite(system="tms", route="pickups", records=[pickup]), ticket(d, tid, text, entities)]
    return Planted(description=text, entities=entities, setup=setup, gold=gold,
                   facts={"next_available_date": nxt, "carrier_status": pickup["status"]})


def _build_label(d: Draw) -> Planted:
    rng = d.rng
    sid, tid, order = d.ids.shipment(), d.ids.ticket(), d.ids.order()
    picked = d.variant == "already_picked_up"
    wms, tms = parcel(rng, sid, status="in_transit" if picked else "label_created")
    wms["order_id"] = tms["order_id"] = order
    wms["dispatch_status"] = "shipped" if picked else "packed"
    tms["label_cost"] = round(rng.uniform(3.5, 9.0), 2)
    printed = d.when - timedelta(hours=rng.randint(3, 30))
    cancel = rng.choice(["customer cancelled by phone", "payment failed", "sales cancelled: out of stock"])
    wms_order = {"order_id": order, "customer_id": wms["customer_id"], "site": wms["site"],
                 "status": "cancelled", "lines": rng.randint(1, 6),
                 "created_at": (printed - timedelta(hours=5)).isoformat(),
                 "cancelled_at": (printed + timedelta(hours=1)).isoformat(), "cancel_reason": cancel}
    scans = [("LABEL_CREATED", wms["site"], 0, "")] + ([("PICKED_UP", wms["site"], 3, "")] if picked else [])
    entities = {"order_id": order, "shipment_id": sid, "ticket_id": tid}
    text = describe(rng, _LABEL_TEMPLATES, order=order, carrier=tms["carrier"], sid=sid,
                    tracking=tms["tracking_number"], cancel=cancel)
    ship = {"system": "tms", "table": "shipments", "where": {"shipment_id": sid}, "count": 1}
    voids = {"system": "tms", "table": "label_voids", "where": {"shipment_id": sid}}
    if picked:
        outcome, reason = "escalated", "Carrier already picked the parcel up; needs an intercept."
        state = [StateAssertion(**ship, values={"label_status": "active", "status": "in_transit"}),
                 StateAssertion(**voids, count=0)]
    else:
        outcome, reason = "resolved", f"Order {order} is cancelled; voided the unused label."
        state = [StateAssertion(**ship, values={"label_status": "voided", "status": "label_voided"}),
                 StateAssertion(**voids, count=1, values={"refund_amount": tms["label_cost"]})]
    gold = ticketed_gold(
        outcome=outcome, ticket_id=tid, team="carrier_relations", reason=reason, assertions=state,
        reads=[read("wms_get_order", order_id=order), read("tms_get_tracking", shipment_id=sid)],
        act=[write("tms_void_label", {"shipment_id": sid, "reason": reason}, ["shipment_id"])])
    setup = [scales_write(), AdminWrite(system="wms", route="orders", records=[wms_order]),
             AdminWrite(system="wms", route="shipments", records=[wms]),
             AdminWrite(system="tms", route="shipments", records=[tms]),
             AdminWrite(system="tms", route="tracking-events", records=events(sid, printed, scans)),
             ticket(d, tid, text, entities)]
    return Planted(description=text, entities=entities, setup=setup, gold=gold,
                   facts={"carrier_status": tms["status"], "label_cost": tms["label_cost"]})


def _build_customs(d: Draw) -> Planted:
    rng = d.rng
    sid, tid, order, cid = d.ids.shipment(), d.ids.ticket(), d.ids.order(), d.ids.customer()
    found = d.variant == "attach_invoice"
    wms, tms = parcel(rng, sid, status="held_customs")
    wms["order_id"] = tms["order_id"] = order
    wms["customer_id"] = cid
    country, city, postcode, street = rng.choice(_ABROAD)
    customer = company(rng, cid)
    issued = d.when - timedelta(days=rng.randint(3, 8))
    value = round(rng.uniform(80, 4000), 2)
    invoices = [{"invoice_id": d.ids.invoice(), "customer_id": cid, "order_id": order, "shipment_id": sid,
                 "kind": "goods", "amount": value, "currency": "EUR", "status": "open",
                 "issued_at": issued.isoformat()}]
    if found:
        invoices.append({**invoices[0], "invoice_id": d.ids.invoice(), "kind": "commercial"})
    reference = invoices[-1]["invoice_id"] if found else None
    scans = [("LABEL_CREATED", wms["site"], 0, ""), ("PICKED_UP", wms["site"], 4, ""),
             ("HUB_SCAN", "export hub", 10, ""),
             ("CUSTOMS_HOLD", f"customs {country}", 20, "documents incomplete")]
    entities = {"shipment_id": sid, "order_id": order, "ticket_id": tid}
    text = describe(rng, _CUSTOMS_TEMPLATES, sid=sid, country=country, order=order, carrier=tms["carrier"],
                    tracking=tms["tracking_number"], city=city)
    customs = {"system": "tms", "table": "customs", "where": {"shipment_id": sid}, "count": 1}
    docs = {"system": "tms", "table": "customs_documents", "where": {"shipment_id": sid}}
    if found:
        outcome, reason = "resolved", f"Submitted commercial invoice {reference} to customs."
        state = [StateAssertion(**customs, values={"status": "documents_submitted", "missing_documents": ""}),
                 StateAssertion(**docs, count=1, values={"document_type": "commercial_invoice",
                                                         "reference": reference})]
    else:
        outcome, reason = "escalated", f"ERP has no commercial invoice for {order}; customs must raise one."
        state = [StateAssertion(**customs, values={"status": "held",
                                                   "missing_documents": "commercial_invoice"}),
                 StateAssertion(**docs, count=0)]
    gold = ticketed_gold(
        outcome=outcome, ticket_id=tid, team="customs", reason=reason, assertions=state,
        reads=[read("tms_get_customs", shipment_id=sid),
               read("erp_get_commercial_invoice", ok=found, order_id=order)],
        act=[write("tms_attach_customs_document", {"shipment_id": sid, "document_type": "commercial_invoice",
                                                   "reference": reference or ""},
                   ["shipment_id", "document_type", "reference"])])
    setup = [scales_write(), AdminWrite(system="wms", route="shipments", records=[wms]),
             AdminWrite(system="tms", route="shipments", records=[tms]),
             AdminWrite(system="tms", route="addresses", records=[{
                 "shipment_id": sid, "name": f"{customer['name'].split()[0]} {city}", "street": street,
                 "postcode": postcode, "city": city, "country": country, "updated_at": issued.isoformat()}]),
             AdminWrite(system="tms", route="customs", records=[{
                 "shipment_id": sid, "destination_country": country, "status": "held",
                 "missing_documents": "commercial_invoice", "hold_reason": "commercial invoice missing",
                 "updated_at": d.time(1)}]),
             AdminWrite(system="tms", route="tracking-events", records=events(sid, issued, scans)),
             AdminWrite(system="erp", route="customers", records=[customer]),
             AdminWrite(system="erp", route="invoices", records=invoices), ticket(d, tid, text, entities)]
    return Planted(description=text, entities=entities, setup=setup, gold=gold,
                   facts={"commercial_invoice": reference, "destination": country})


MISSED_PICKUP = ExceptionClass(
    name="missed_pickup",
    summary="Carrier missed a pickup; rebook its next slot unless the carrier says it was collected.",
    systems=("tms", "tkt"),
    variants={
        "reschedule": Variant(0.75, "resolved", note="missed: book the next available date"),
        "carrier_says_collected": Variant(0.25, "escalated", note="carrier recorded it completed"),
    },
    identifying=("pickup_id", "ticket_id"),
    build=_build_pickup,
)

LABEL_CANCELLED_ORDER = ExceptionClass(
    name="label_cancelled_order",
    summary="A label exists for a cancelled order; void it unless the carrier already picked the parcel up.",
    systems=("wms", "tms", "tkt"),
    variants={
        "void_label": Variant(0.7, "resolved", note="not picked up: void the label"),
        "already_picked_up": Variant(0.3, "escalated", note="in transit: needs an intercept"),
    },
    identifying=("order_id", "shipment_id", "ticket_id"),
    build=_build_label,
)

CUSTOMS_DOCUMENTS_MISSING = ExceptionClass(
    name="customs_documents_missing",
    summary="Customs holds a parcel for its commercial invoice; submit it from the ERP, escalate if none.",
    systems=("tms", "erp", "tkt"),
    variants={
        "attach_invoice": Variant(0.7, "resolved", note="ERP has the commercial invoice: submit it"),
        "no_commercial_invoice": Variant(0.3, "escalated", note="no commercial invoice for the order"),
    },
    identifying=("shipment_id", "order_id", "ticket_id"),
    build=_build_customs,
)
