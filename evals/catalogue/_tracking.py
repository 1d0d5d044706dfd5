"""Tracking exceptions (TMS, WMS, ticketing).

tracking_out_of_sync: the carrier shows the parcel delivered, the WMS still shows it shipped.
  Resolved: record the delivery in the WMS from the carrier's scan.
  Escalated: the WMS says the parcel never left the warehouse (packed) while the carrier has scans:
  contradictory data, the warehouse must check the floor.
tracking_stuck: no carrier scan for days.
  Resolved: ask the carrier to trace the parcel.
  Escalated: the carrier has already declared it lost: a loss claim for carrier relations.
"""

from __future__ import annotations

from datetime import timedelta

from opsagent.evals.catalogue._common import Draw, describe, events, read, ticket, ticketed_gold, write
from opsagent.evals.catalogue._model import ExceptionClass, Planted, StateAssertion, Variant
from opsagent.tools.platform.scenarios import AdminWrite, parcel, scales_write

_SYNC_TEMPLATES = [
    "Customer {customer} says order {order} arrived but our system still shows {sid} as shipped. {filler}",
    "{sid}: status mismatch, {carrier} tracking = delivered, WMS = {wms_status}. Please sync. {filler}",
    "Tracking out of sync for {sid} ({carrier} {tracking}). Delivery confirmation not in the WMS. {filler}",
    "POD exists at {carrier} for {sid} but the order is not closed on our side. {filler}",
    "hi, can someone update {sid}? carrier shows delivered on {day}, we don't. {filler}",
]
_STUCK_TEMPLATES = [
    "No tracking update on {sid} since {day} ({carrier}, {tracking}). Customer is asking. {filler}",
    "{sid} stuck in transit, last scan {last} at {where}. {filler}",
    "Parcel {sid} for order {order} hasn't moved for days - can we chase {carrier}? {filler}",
    "Customer {customer} chasing delivery of {sid}; tracking frozen since {day}. {filler}",
    "{carrier} tracking {tracking} ({sid}) dead since {day}. Pls investigate. {filler}",
]


def _route(d: Draw, site: str, end: list[tuple[str, str, float, str]]) -> list[tuple[str, str, float, str]]:
    """Label, pickup and two hub scans, then `end`."""
    hubs = d.rng.sample(["Hub Kassel", "Hub Hannover", "Hub Nürnberg", "Hub Dortmund", "Hub Erfurt"], 2)
    return [("LABEL_CREATED", site, 0, ""), ("PICKED_UP", site, d.rng.randint(3, 9), ""),
            ("HUB_SCAN", hubs[0], d.rng.randint(5, 14), ""), ("HUB_SCAN", hubs[1], d.rng.randint(4, 12), ""),
            *end]


def _build_sync(d: Draw) -> Planted:
    sid, tid = d.ids.shipment(), d.ids.ticket()
    wms, tms = parcel(d.rng, sid, status="delivered")
    wms["dispatch_status"] = "shipped" if d.variant == "record_delivery" else "packed"
    start = d.when - timedelta(days=d.rng.randint(3, 8))
    signer = d.rng.choice(["M. Weber", "K. Yilmaz", "reception", "neighbour (no. 12)", "S. Braun"])
    scans = events(sid, start, _route(d, wms["site"], [
        ("OUT_FOR_DELIVERY", "delivery depot", 10, ""), ("DELIVERED", "consignee", 4, f"signed: {signer}")]))
    entities = {"shipment_id": sid, "ticket_id": tid}
    text = describe(d.rng, _SYNC_TEMPLATES, sid=sid, carrier=tms["carrier"], tracking=tms["tracking_number"],
                    customer=wms["customer_id"], order=wms["order_id"], wms_status=wms["dispatch_status"],
                    day=scans[-1]["at"][:10])
    where = {"shipment_id": sid}
    if d.variant == "record_delivery":
        outcome, reason = "resolved", "Recorded the carrier's delivery scan in the WMS."
    else:
        outcome, reason = "escalated", "WMS says the parcel is still packed on site; floor must check."
    gold = ticketed_gold(
        outcome=outcome, ticket_id=tid, team="warehouse_ops", reason=reason,
        reads=[read("tms_get_tracking", shipment_id=sid), read("wms_get_shipment", shipment_id=sid)],
        act=[write("wms_update_dispatch_status", {"shipment_id": sid, "dispatch_status": "delivered",
                                                  "reason": reason}, ["shipment_id", "dispatch_status"])],
        assertions=[StateAssertion(system="wms", table="shipments", where=where, count=1, values={
            "dispatch_status": "delivered" if outcome == "resolved" else "packed"})])
    setup = [scales_write(), AdminWrite(system="wms", route="shipments", records=[wms]),
             AdminWrite(system="tms", route="shipments", records=[tms]),
             AdminWrite(system="tms", route="tracking-events", records=scans),
             ticket(d, tid, text, entities)]
    return Planted(description=text, entities=entities, setup=setup, gold=gold,
                   facts={"carrier_status": "delivered", "wms_status": wms["dispatch_status"]})


def _build_stuck(d: Draw) -> Planted:
    sid, tid = d.ids.shipment(), d.ids.ticket()
    lost = d.variant == "declared_lost"
    wms, tms = parcel(d.rng, sid, status="lost" if lost else "in_transit")
    quiet = d.rng.randint(5, 14)
    start = d.when - timedelta(days=quiet + 2)
    end = [("LOST_DECLARED", "carrier claims desk", 24 * (quiet - 1), "parcel not found after search")]
    scans = events(sid, start, _route(d, wms["site"], end if lost else []))
    last = scans[-2] if lost else scans[-1]
    entities = {"shipment_id": sid, "ticket_id": tid}
    text = describe(d.rng, _STUCK_TEMPLATES, sid=sid, carrier=tms["carrier"], tracking=tms["tracking_number"],
                    order=wms["order_id"], customer=wms["customer_id"], day=last["at"][:10],
                    last=last["code"], where=last["location"])
    traces = {"system": "tms", "table": "traces", "where": {"shipment_id": sid}}
    if lost:
        outcome, reason = "escalated", "Carrier declared the parcel lost; needs a loss claim."
        state = [StateAssertion(**traces, count=0)]
    else:
        outcome, reason = "resolved", f"No scan for {quiet} days; asked the carrier to trace it."
        state = [StateAssertion(**traces, count=1, values={"status": "open"})]
    gold = ticketed_gold(
        outcome=outcome, ticket_id=tid, team="carrier_relations", reason=reason, assertions=state,
        reads=[read("tms_get_tracking", shipment_id=sid)],
        act=[write("tms_request_trace", {"shipment_id": sid, "reason": reason}, ["shipment_id"])])
    setup = [scales_write(), AdminWrite(system="wms", route="shipments", records=[wms]),
             AdminWrite(system="tms", route="shipments", records=[tms]),
             AdminWrite(system="tms", route="tracking-events", records=scans),
             ticket(d, tid, text, entities)]
    return Planted(description=text, entities=entities, setup=setup, gold=gold,
                   facts={"carrier_status": tms["status"], "quiet_days": quiet})


TRACKING_OUT_OF_SYNC = ExceptionClass(
    name="tracking_out_of_sync",
    summary="Carrier shows delivered, WMS does not; record the delivery unless the WMS says it never left.",
    systems=("tms", "wms", "tkt"),
    variants={
        "record_delivery": Variant(0.75, "resolved",
                                   note="WMS shipped, carrier delivered: record the delivery"),
        "never_left": Variant(0.25, "escalated", note="WMS packed, carrier delivered: contradictory"),
    },
    identifying=("shipment_id", "ticket_id"),
    build=_build_sync,
)

TRACKING_STUCK = ExceptionClass(
    name="tracking_stuck",
    summary="No carrier scan for days; request a trace unless the carrier already declared the parcel lost.",
    systems=("tms", "tkt"),
    variants={
        "request_trace": Variant(0.7, "resolved", note="in transit, quiet 5-14 days: open a trace"),
        "declared_lost": Variant(0.3, "escalated", note="carrier declared it lost: loss claim"),
    },
    identifying=("shipment_id", "ticket_id"),
    build=_build_stuck,
)
