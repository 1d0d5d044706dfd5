"""The TMS's tracking side: carrier scan events, traces of parcels gone quiet, label voids.

A shipment's `status` is the carrier's view: label_created (label printed, not yet picked up),
in_transit, delivered, invoiced, exception (e.g. address rejected), held_customs, lost (declared
lost by the carrier), label_voided.
"""

from __future__ import annotations

import sqlite3
from typing import Annotated, Literal

from fastapi import Depends, FastAPI
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from opsagent.tools.platform.store import (
    Change,
    Database,
    WriteOptions,
    add_admin_upsert,
    conflict,
    insert,
    next_id,
    perform_write,
    row_or_404,
    utc_now,
    write_options,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tracking_events (
    event_id TEXT PRIMARY KEY, shipment_id TEXT NOT NULL REFERENCES shipments(shipment_id),
    at TEXT NOT NULL, code TEXT NOT NULL, location TEXT NOT NULL, detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY, shipment_id TEXT NOT NULL REFERENCES shipments(shipment_id),
    reason TEXT NOT NULL, status TEXT NOT NULL, opened_at TEXT NOT NULL, cancelled_at TEXT
);
CREATE TABLE IF NOT EXISTS label_voids (
    void_id TEXT PRIMARY KEY, shipment_id TEXT NOT NULL REFERENCES shipments(shipment_id),
    reason TEXT NOT NULL, refund_amount REAL NOT NULL, created_at TEXT NOT NULL
);
"""
VOLATILE = {
    "tracking_events": {"event_id", "at", "detail"},
    "traces": {"trace_id", "reason"},
    "label_voids": {"void_id", "reason"},
}

ShipmentId = Annotated[str, PathParam(description="Shipment id, e.g. SHP-104233.")]
Reason = Annotated[str, Field(min_length=1, max_length=500,
                              description="Why, in plain words (kept on file).")]


class TrackingEvent(BaseModel):
    """One carrier scan (admin seeding input and part of the tracking view)."""

    event_id: str
    shipment_id: str
    at: str
    code: str = Field(description="LABEL_CREATED, PICKED_UP, HUB_SCAN, OUT_FOR_DELIVERY, DELIVERED, "
                      "DAMAGE_REPORTED, ADDRESS_REJECTED, ADDRESS_CORRECTED, CUSTOMS_HOLD, "
                      "LOST_DECLARED, ...")
    location: str
    detail: str = ""


class Tracking(BaseModel):
    """The carrier's tracking view of a shipment."""

    shipment_id: str
    carrier: str
    tracking_number: str
    status: str = Field(description="label_created, in_transit, delivered, invoiced, exception, "
                        "held_customs, lost, label_voided.")
    label_status: Literal["active", "voided"]
    last_event_code: str | None
    last_event_at: str | None
    last_event_location: str | None
    delivered_at: str | None = Field(description="Time of the DELIVERED scan, if any.")
    damage_reported: Literal["yes", "no"] = Field(description="'yes' if the carrier recorded damage.")
    open_trace_id: str | None = Field(description="The open trace request, if any.")
    events: list[TrackingEvent] = Field(description="Every scan, oldest first.")


class TraceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


class Trace(BaseModel):
    trace_id: str
    shipment_id: str
    reason: str
    status: Literal["open", "cancelled"]
    opened_at: str
    cancelled_at: str | None = None


class LabelVoidIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


class LabelVoid(BaseModel):
    void_id: str
    shipment_id: str
    reason: str
    refund_amount: float = Field(description="Label cost the carrier refunds.")
    created_at: str


def shipment_row(conn: sqlite3.Connection, shipment_id: str) -> dict:
    found = row_or_404(conn, "Shipment", shipment_id,
                       "SELECT * FROM shipments WHERE shipment_id = ?", shipment_id)
    return found


def add_event(conn: sqlite3.Connection, shipment_id: str, code: str, location: str, detail: str = "") -> None:
    """Append a scan event (called inside a write transaction)."""
    insert(conn, "tracking_events", {"event_id": next_id(conn, "tracking_events", "EV"),
                                     "shipment_id": shipment_id, "at": utc_now(), "code": code,
                                     "location": location, "detail": detail})


def tracking(conn: sqlite3.Connection, shipment_id: str) -> Tracking:
    ship = shipment_row(conn, shipment_id)
    events = [TrackingEvent(**r) for r in conn.execute(
        "SELECT * FROM tracking_events WHERE shipment_id = ? ORDER BY at, event_id", (shipment_id,))]
    last = events[-1] if events else None
    delivered = [e.at for e in events if e.code == "DELIVERED"]
    return Tracking(
        shipment_id=shipment_id, carrier=ship["carrier"], tracking_number=ship["tracking_number"],
        status=ship["status"], label_status=ship["label_status"], open_trace_id=ship["open_trace_id"],
        last_event_code=last.code if last else None, last_event_at=last.at if last else None,
        last_event_location=last.location if last else None,
        delivered_at=delivered[-1] if delivered else None,
        damage_reported="yes" if any(e.code == "DAMAGE_REPORTED" for e in events) else "no", events=events,
    )


def _trace(conn: sqlite3.Connection, trace_id: str) -> Trace:
    found = row_or_404(conn, "Trace", trace_id, "SELECT * FROM traces WHERE trace_id = ?", trace_id)
    return Trace(**found)


def add_routes(app: FastAPI, db: Database) -> None:
    """Tracking, trace and label-void endpoints, and the admin route for scan events."""
    missing = {404: {"description": "Unknown id"}}

    @app.get("/shipments/{shipment_id}/tracking", operation_id="tms_get_tracking", response_model=Tracking,
             summary="Get the carrier's tracking of a shipment: status, last scan, delivery time, whether "
             "damage was recorded, any open trace, and every scan event.", responses=missing)
    def get_tracking(shipment_id: ShipmentId) -> Tracking:
        with db.read() as conn:
            return tracking(conn, shipment_id)

    @app.post("/shipments/{shipment_id}/traces", operation_id="tms_request_trace", response_model=Trace,
              status_code=201,
              summary="Ask the carrier to trace a parcel in transit that has gone quiet. At most one open "
              "trace per shipment; only for parcels in transit.",
              responses={**missing, 409: {"description": "Not in transit, or a trace is already open"}},
              openapi_extra={"x-opsagent-reversible": True, "x-opsagent-inverse": "tms_cancel_trace"})
    def request_trace(shipment_id: ShipmentId, body: TraceIn,
                      options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            ship = shipment_row(conn, shipment_id)
            if ship["status"] != "in_transit":
                raise conflict(f"Shipment {shipment_id!r} is {ship['status']}; "
                               "only parcels in transit are traced")
            if ship["open_trace_id"] is not None:
                raise conflict(f"Shipment {shipment_id!r} already has an open trace "
                               f"({ship['open_trace_id']})")
            before = tracking(conn, shipment_id).model_dump(mode="json")
            trace = Trace(trace_id=next_id(conn, "traces", "TR"), shipment_id=shipment_id, reason=body.reason,
                          status="open", opened_at=utc_now())
            insert(conn, "traces", trace.model_dump())
            conn.execute("UPDATE shipments SET open_trace_id = ? WHERE shipment_id = ?",
                         (trace.trace_id, shipment_id))
            data = trace.model_dump(mode="json")
            after = {"tracking": tracking(conn, shipment_id).model_dump(mode="json"), "trace": data}
            return Change(body=data, before={"tracking": before, "trace": None}, after=after, status_code=201)

        return perform_write(db, operation="tms_request_trace", options=options, apply=apply,
                             request={"shipment_id": shipment_id, **body.model_dump()})

    @app.post("/traces/{trace_id}/cancel", operation_id="tms_cancel_trace", response_model=Trace,
              summary="Cancel an open trace request.",
              responses={**missing, 409: {"description": "The trace is not open"}},
              openapi_extra={"x-opsagent-reversible": True})
    def cancel_trace(trace_id: Annotated[str, PathParam(description="Trace id, e.g. TR-000003.")],
                     options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _trace(conn, trace_id)
            if before.status != "open":
                raise conflict(f"Trace {trace_id!r} is {before.status}, not open")
            conn.execute("UPDATE traces SET status = 'cancelled', cancelled_at = ? WHERE trace_id = ?",
                         (utc_now(), trace_id))
            conn.execute("UPDATE shipments SET open_trace_id = NULL WHERE open_trace_id = ?", (trace_id,))
            after = _trace(conn, trace_id).model_dump(mode="json")
            return Change(body=after, before=before.model_dump(mode="json"), after=after)

        return perform_write(db, operation="tms_cancel_trace", options=options, apply=apply,
                             request={"trace_id": trace_id})

    @app.post("/shipments/{shipment_id}/label/void", operation_id="tms_void_label", response_model=LabelVoid,
              status_code=201,
              summary="Void the shipping label of a parcel the carrier has not picked up yet; the carrier "
              "refunds the label cost. Irreversible: a voided label cannot be reused.",
              responses={**missing, 409: {"description": "Already picked up, or already voided"}},
              openapi_extra={"x-opsagent-reversible": False})
    def void_label(shipment_id: ShipmentId, body: LabelVoidIn,
                   options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            ship = shipment_row(conn, shipment_id)
            if ship["label_status"] != "active" or ship["status"] != "label_created":
                raise conflict(f"Shipment {shipment_id!r} is {ship['status']} with a {ship['label_status']} "
                               "label; only labels not yet picked up can be voided")
            before = tracking(conn, shipment_id).model_dump(mode="json")
            void = LabelVoid(void_id=next_id(conn, "label_voids", "LV"), shipment_id=shipment_id,
                             reason=body.reason, refund_amount=ship["label_cost"], created_at=utc_now())
            insert(conn, "label_voids", void.model_dump())
            conn.execute("UPDATE shipments SET status = 'label_voided', label_status = 'voided' "
                         "WHERE shipment_id = ?", (shipment_id,))
            add_event(conn, shipment_id, "LABEL_VOIDED", "carrier system", body.reason)
            data = void.model_dump(mode="json")
            after = {"tracking": tracking(conn, shipment_id).model_dump(mode="json"), "void": data}
            return Change(body=data, before={"tracking": before, "void": None}, after=after, status_code=201)

        return perform_write(db, operation="tms_void_label", options=options, apply=apply,
                             request={"shipment_id": shipment_id, **body.model_dump()})

    add_admin_upsert(app, db, "tracking-events", TrackingEvent, key="event_id")
