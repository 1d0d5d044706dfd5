"""The sandbox WMS: parcels as the warehouse scanned them, the scales that weighed them, rescans."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from opsagent.tools.platform.store import (
    Change,
    Database,
    WriteOptions,
    admin_router,
    next_id,
    not_found,
    perform_write,
    row,
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
    scale_id TEXT NOT NULL REFERENCES scales(scale_id)
);
CREATE TABLE IF NOT EXISTS rescan_requests (
    request_id TEXT PRIMARY KEY, shipment_id TEXT NOT NULL REFERENCES shipments(shipment_id),
    reason TEXT NOT NULL, priority TEXT NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, cancelled_at TEXT
);
"""

ShipmentId = Annotated[str, PathParam(description="Shipment id, e.g. SHP-104233.")]
CheckResult = Literal["passed", "failed"]


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


class RescanRequest(BaseModel):
    request_id: str
    shipment_id: str
    reason: str
    priority: str
    status: Literal["requested", "cancelled"]
    created_at: str
    cancelled_at: str | None = None


def _shipment(conn: sqlite3.Connection, shipment_id: str) -> Shipment:
    found = row(
        conn,
        "SELECT s.*, c.last_check_result AS scale_check FROM shipments s "
        "JOIN scales c USING (scale_id) WHERE s.shipment_id = ?",
        shipment_id,
    )
    if found is None:
        raise not_found("Shipment", shipment_id)
    return Shipment(**found)


def _rescan(conn: sqlite3.Connection, request_id: str) -> RescanRequest:
    found = row(conn, "SELECT * FROM rescan_requests WHERE request_id = ?", request_id)
    if found is None:
        raise not_found("Rescan request", request_id)
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
            found = row(conn, "SELECT * FROM scales WHERE scale_id = ?", scale_id)
        if found is None:
            raise not_found("Scale", scale_id)
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

    @app.post("/_admin/scales", include_in_schema=False)
    def upsert_scales(scales: list[Scale]) -> dict:
        return {"upserted": db.upsert("scales", "scale_id", [s.model_dump() for s in scales])}

    @app.post("/_admin/shipments", include_in_schema=False)
    def upsert_shipments(shipments: list[ShipmentRecord]) -> dict:
        return {"upserted": db.upsert("shipments", "shipment_id", [s.model_dump() for s in shipments])}

    app.include_router(admin_router(db))
    return app
