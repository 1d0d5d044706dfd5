"""The sandbox WMS: orders, parcels as the warehouse scanned and dispatched them, the scales that
weighed them, rescans; stock, cycle counts and stock adjustments live in `wms_stock`."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from opsagent.tools.platform import wms_stock
from opsagent.tools.platform.store import (
    Change,
    Database,
    WriteOptions,
    add_admin_upsert,
    admin_router,
    conflict,
    insert,
    next_id,
    perform_write,
    row,
    row_or_404,
    utc_now,
    write_options,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS scales (
    scale_id TEXT PRIMARY KEY, site TEXT NOT NULL, model TEXT NOT NULL,
    last_check_at TEXT NOT NULL, last_check_result TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shipments (
    shipment_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, customer_id TEXT NOT NULL,
    site TEXT NOT NULL, scanned_weight_kg REAL NOT NULL, length_cm REAL NOT NULL,
    width_cm REAL NOT NULL, height_cm REAL NOT NULL, scanned_at TEXT NOT NULL,
    scale_id TEXT NOT NULL REFERENCES scales(scale_id),
    dispatch_status TEXT NOT NULL DEFAULT 'shipped', dispatch_updated_at TEXT
);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, site TEXT NOT NULL, status TEXT NOT NULL,
    lines INTEGER NOT NULL, created_at TEXT NOT NULL, cancelled_at TEXT, cancel_reason TEXT
);
CREATE TABLE IF NOT EXISTS dispatch_changes (
    change_id TEXT PRIMARY KEY, shipment_id TEXT NOT NULL REFERENCES shipments(shipment_id),
    old_status TEXT NOT NULL, new_status TEXT NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rescan_requests (
    request_id TEXT PRIMARY KEY, shipment_id TEXT NOT NULL REFERENCES shipments(shipment_id),
    reason TEXT NOT NULL, priority TEXT NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, cancelled_at TEXT
);
"""

SCHEMA += wms_stock.SCHEMA
# Columns whose values depend on time, on sequence counters or are free text: scoring compares
# only whether they are set (see opsagent.evals.scoring).
VOLATILE = {
    "rescan_requests": {"request_id", "reason"},
    "dispatch_changes": {"change_id", "reason"},
    "shipments": {"dispatch_updated_at"},
    **wms_stock.VOLATILE,
}

ShipmentId = Annotated[str, PathParam(description="Shipment id, e.g. SHP-104233.")]
CheckResult = Literal["passed", "failed"]
DispatchStatus = Literal["packed", "shipped", "delivered", "returned"]
# Moves the WMS refuses: a parcel the warehouse still holds cannot have been delivered or returned.
_IMPOSSIBLE = {("packed", "delivered"), ("packed", "returned")}


class Scale(BaseModel):
    """A floor scale and its last calibration check."""

    scale_id: str
    site: str
    model: str
    last_check_at: str
    last_check_result: CheckResult


class ShipmentRecord(BaseModel):
    """A parcel as scanned at outbound (admin seeding input)."""

    shipment_id: str
    order_id: str
    customer_id: str
    site: str
    scanned_weight_kg: float = Field(gt=0)
    length_cm: float = Field(gt=0)
    width_cm: float = Field(gt=0)
    height_cm: float = Field(gt=0)
    scanned_at: str
    scale_id: str
    dispatch_status: DispatchStatus = Field(
        "shipped", description="Where the parcel is as the warehouse knows it: packed (still on site), "
        "shipped (handed to the carrier), delivered, returned.")


class Shipment(ShipmentRecord):
    """A scanned parcel plus whether its scale passed its last calibration check."""

    scale_check: CheckResult = Field(
        description="'passed' if the scale's last calibration check passed: only then is the "
        "scanned weight authoritative."
    )


class RescanRequestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500, description="Why the parcel must be re-weighed.")
    priority: Literal["normal", "urgent"] = Field("normal", description="Floor priority.")


class DispatchStatusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dispatch_status: DispatchStatus = Field(description="The new dispatch status.")
    reason: str = Field(min_length=1, max_length=500, description="Why, e.g. the carrier's delivery scan.")


class Order(BaseModel):
    """A customer order as the warehouse fulfils it."""

    order_id: str
    customer_id: str
    site: str
    status: Literal["open", "picking", "shipped", "cancelled"] = Field(
        description="cancelled: the customer or sales cancelled it; nothing may ship for it.")
    lines: int = Field(ge=1, description="Number of order lines.")
    created_at: str
    cancelled_at: str | None = None
    cancel_reason: str | None = None


class RescanRequest(BaseModel):
    request_id: str
    shipment_id: str
    reason: str
    priority: str
    status: Literal["requested", "cancelled"]
    created_at: str
    cancelled_at: str | None = None


def _shipment(conn: sqlite3.Connection, shipment_id: str) -> Shipment:
    found = row_or_404(
        conn, "Shipment", shipment_id,
        "SELECT s.*, c.last_check_result AS scale_check FROM shipments s "
        "JOIN scales c USING (scale_id) WHERE s.shipment_id = ?",
        shipment_id,
    )
    return Shipment(**found)


def _rescan(conn: sqlite3.Connection, request_id: str) -> RescanRequest:
    found = row_or_404(conn, "Rescan request", request_id,
                       "SELECT * FROM rescan_requests WHERE request_id = ?", request_id)
    return RescanRequest(**found)


def create_app(db_path: Path) -> FastAPI:
    """The WMS app over the SQLite file at `db_path` (created if missing)."""
    db = Database(db_path, SCHEMA)
    app = FastAPI(title="Warehouse Management System (sandbox)", version="1.0")
    app.state.db = db

    @app.get("/shipments/{shipment_id}", operation_id="wms_get_shipment", response_model=Shipment,
             summary="Get a shipment as the warehouse scanned it: weight, dimensions, scale and "
             "whether that scale passed its last calibration check (scale_check).",
             responses={404: {"description": "Unknown shipment id"}})
    def get_shipment(shipment_id: ShipmentId) -> Shipment:
        with db.read() as conn:
            return _shipment(conn, shipment_id)

    @app.get("/scales/{scale_id}", operation_id="wms_get_scale", response_model=Scale,
             summary="Get a floor scale with the date and result of its last calibration check.",
             responses={404: {"description": "Unknown scale id"}})
    def get_scale(scale_id: Annotated[str, PathParam(description="Scale id, e.g. SCL-DUS-02.")]) -> Scale:
        with db.read() as conn:
            found = row_or_404(conn, "Scale", scale_id, "SELECT * FROM scales WHERE scale_id = ?", scale_id)
        return Scale(**found)

    @app.post("/shipments/{shipment_id}/rescan-requests", operation_id="wms_request_rescan",
              response_model=RescanRequest, status_code=201,
              summary="Ask the warehouse floor to re-weigh and re-measure a parcel.",
              responses={404: {"description": "Unknown shipment"},
                         409: {"description": "A rescan is already pending"}},
              openapi_extra={"x-opsagent-reversible": True,
                             "x-opsagent-inverse": "wms_cancel_rescan_request"})
    def request_rescan(shipment_id: ShipmentId, body: RescanRequestIn,
                       options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            _shipment(conn, shipment_id)
            pending = row(conn, "SELECT request_id FROM rescan_requests WHERE shipment_id = ? "
                          "AND status = 'requested'", shipment_id)
            if pending is not None:
                raise HTTPException(409, f"Rescan request {pending['request_id']} is already pending "
                                    f"for shipment {shipment_id!r}")
            created = RescanRequest(request_id=next_id(conn, "rescan_requests", "RR"),
                                    shipment_id=shipment_id, status="requested", created_at=utc_now(),
                                    **body.model_dump())
            conn.execute("INSERT INTO rescan_requests VALUES (:request_id, :shipment_id, :reason, "
                         ":priority, :status, :created_at, :cancelled_at)", created.model_dump())
            data = created.model_dump(mode="json")
            return Change(body=data, before=None, after=data, status_code=201)

        return perform_write(db, operation="wms_request_rescan", options=options, apply=apply,
                             request={"shipment_id": shipment_id, **body.model_dump()})

    @app.post("/rescan-requests/{request_id}/cancel", operation_id="wms_cancel_rescan_request",
              response_model=RescanRequest, summary="Cancel a pending rescan request.",
              responses={404: {"description": "Unknown request"}, 409: {"description": "Not pending"}},
              openapi_extra={"x-opsagent-reversible": True})
    def cancel_rescan(request_id: Annotated[str, PathParam(description="Rescan request id, e.g. RR-000012.")],
                      options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _rescan(conn, request_id)
            if before.status != "requested":
                raise HTTPException(409, f"Rescan request {request_id!r} is {before.status}, not pending")
            conn.execute("UPDATE rescan_requests SET status = 'cancelled', cancelled_at = ? "
                         "WHERE request_id = ?", (utc_now(), request_id))
            after = _rescan(conn, request_id).model_dump(mode="json")
            return Change(body=after, before=before.model_dump(mode="json"), after=after)

        return perform_write(db, operation="wms_cancel_rescan_request", options=options, apply=apply,
                             request={"request_id": request_id})

    @app.post("/shipments/{shipment_id}/dispatch-status", operation_id="wms_update_dispatch_status",
              response_model=Shipment,
              summary="Set where a parcel is as the warehouse records it (e.g. delivered, from the "
              "carrier's delivery scan). A parcel still packed on site cannot become delivered or returned.",
              responses={404: {"description": "Unknown shipment"},
                         409: {"description": "Already in that status, or an impossible move"}},
              openapi_extra={"x-opsagent-reversible": True,
                             "x-opsagent-inverse": "wms_update_dispatch_status"})
    def update_dispatch_status(shipment_id: ShipmentId, body: DispatchStatusIn,
                               options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _shipment(conn, shipment_id)
            old, new = before.dispatch_status, body.dispatch_status
            if old == new:
                raise conflict(f"Shipment {shipment_id!r} is already {new}")
            if (old, new) in _IMPOSSIBLE:
                raise conflict(f"Shipment {shipment_id!r} is still packed in the warehouse; "
                               f"it cannot be {new}")
            now = utc_now()
            insert(conn, "dispatch_changes", {
                "change_id": next_id(conn, "dispatch_changes", "DC"), "shipment_id": shipment_id,
                "old_status": old, "new_status": new, "reason": body.reason, "created_at": now})
            conn.execute("UPDATE shipments SET dispatch_status = ?, dispatch_updated_at = ? "
                         "WHERE shipment_id = ?", (new, now, shipment_id))
            after = _shipment(conn, shipment_id).model_dump(mode="json")
            return Change(body=after, before=before.model_dump(mode="json"), after=after)

        return perform_write(db, operation="wms_update_dispatch_status", options=options, apply=apply,
                             request={"shipment_id": shipment_id, **body.model_dump()})

    @app.get("/orders/{order_id}", operation_id="wms_get_order", response_model=Order,
             summary="Get a customer order: its status (open, picking, shipped, cancelled) and, if "
             "cancelled, when and why.", responses={404: {"description": "Unknown order"}})
    def get_order(order_id: Annotated[str, PathParam(description="Order id, e.g. SO-4410021.")]) -> Order:
        with db.read() as conn:
            found = row_or_404(conn, "Order", order_id, "SELECT * FROM orders WHERE order_id = ?", order_id)
        return Order(**found)

    wms_stock.add_routes(app, db)
    add_admin_upsert(app, db, "scales", Scale, key="scale_id")
    add_admin_upsert(app, db, "shipments", ShipmentRecord, key="shipment_id")
    add_admin_upsert(app, db, "orders", Order, key="order_id")
    app.include_router(admin_router(db))
    return app
