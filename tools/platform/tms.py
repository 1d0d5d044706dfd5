"""The sandbox TMS: carrier shipments as billed, weight disputes and billing adjustments; tracking,
traces and label voids live in `tms_tracking`, addresses and customs in `tms_delivery`,
pickups in `tms_pickups`."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from opsagent.tools.platform import tms_delivery, tms_pickups, tms_tracking
from opsagent.tools.platform.store import (
    Change,
    Database,
    WriteOptions,
    add_admin_upsert,
    admin_router,
    next_id,
    perform_write,
    row_or_404,
    utc_now,
    write_options,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS shipments (
    shipment_id TEXT PRIMARY KEY, carrier TEXT NOT NULL, service_level TEXT NOT NULL,
    tracking_number TEXT NOT NULL, status TEXT NOT NULL, declared_weight_kg REAL NOT NULL,
    billed_weight_kg REAL NOT NULL, base_charge REAL NOT NULL, rate_per_kg REAL NOT NULL,
    billed_amount REAL NOT NULL, currency TEXT NOT NULL, open_dispute_id TEXT,
    order_id TEXT, label_status TEXT NOT NULL DEFAULT 'active', label_cost REAL NOT NULL DEFAULT 0,
    open_trace_id TEXT
);
CREATE TABLE IF NOT EXISTS weight_disputes (
    dispute_id TEXT PRIMARY KEY, shipment_id TEXT NOT NULL REFERENCES shipments(shipment_id),
    claimed_weight_kg REAL NOT NULL, billed_weight_kg REAL NOT NULL, reason TEXT NOT NULL,
    status TEXT NOT NULL, opened_at TEXT NOT NULL, closed_at TEXT
);
CREATE TABLE IF NOT EXISTS billing_adjustments (
    adjustment_id TEXT PRIMARY KEY, shipment_id TEXT NOT NULL REFERENCES shipments(shipment_id),
    old_billed_weight_kg REAL NOT NULL, new_billed_weight_kg REAL NOT NULL,
    old_amount REAL NOT NULL, new_amount REAL NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL
);
"""

SCHEMA += tms_tracking.SCHEMA + tms_delivery.SCHEMA + tms_pickups.SCHEMA
# Columns whose values depend on time, on sequence counters or are free text: scoring compares
# only whether they are set (see opsagent.evals.scoring).
VOLATILE = {
    "shipments": {"open_dispute_id", "open_trace_id"},
    "weight_disputes": {"dispute_id", "reason"},
    "billing_adjustments": {"adjustment_id", "reason"},
    **tms_tracking.VOLATILE, **tms_delivery.VOLATILE, **tms_pickups.VOLATILE,
}

ShipmentId = Annotated[str, PathParam(description="Shipment id, e.g. SHP-104233.")]
DisputeId = Annotated[str, PathParam(description="Weight dispute id, e.g. WD-000007.")]
Reason = Annotated[
    str, Field(min_length=1, max_length=500, description="Why, in plain words (kept on file).")
]


class Shipment(BaseModel):
    """A shipment as the carrier billed it."""

    shipment_id: str
    carrier: str = Field(description="Carrier name, e.g. DHL, UPS.")
    service_level: str
    tracking_number: str
    status: str
    declared_weight_kg: float
    billed_weight_kg: float
    billed_amount: float
    currency: str
    open_dispute_id: str | None = Field(None, description="The open weight dispute, if any.")


class ShipmentRecord(Shipment):
    """Admin seeding input: a shipment plus its tariff (billed_amount is recomputed), its order and
    its label."""

    base_charge: float = Field(ge=0)
    rate_per_kg: float = Field(gt=0)
    billed_amount: float = 0.0
    order_id: str | None = None
    label_status: Literal["active", "voided"] = "active"
    label_cost: float = Field(0.0, ge=0, description="What the carrier charged for the label.")
    open_trace_id: str | None = None


class WeightDisputeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    claimed_weight_kg: float = Field(gt=0, description="The weight the shipper says is correct, in kg.")
    reason: Reason


class BilledWeightIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    billed_weight_kg: float = Field(gt=0, description="The new billed weight in kg.")
    reason: Reason


class WeightDispute(BaseModel):
    dispute_id: str
    shipment_id: str
    claimed_weight_kg: float
    billed_weight_kg: float = Field(description="Billed weight when the dispute was opened.")
    reason: str
    status: Literal["open", "withdrawn"]
    opened_at: str
    closed_at: str | None = None


def amount(base_charge: float, rate_per_kg: float, weight_kg: float) -> float:
    """The tariff: a base charge plus a rate per billed kg."""
    return round(base_charge + rate_per_kg * weight_kg, 2)


def _raw(conn: sqlite3.Connection, shipment_id: str) -> dict:
    found = row_or_404(conn, "Shipment", shipment_id,
                       "SELECT * FROM shipments WHERE shipment_id = ?", shipment_id)
    return found


def _public(raw: dict) -> dict:
    return Shipment(**raw).model_dump(mode="json")


def _dispute(conn: sqlite3.Connection, dispute_id: str) -> WeightDispute:
    found = row_or_404(conn, "Weight dispute", dispute_id,
                       "SELECT * FROM weight_disputes WHERE dispute_id = ?", dispute_id)
    return WeightDispute(**found)


def create_app(db_path: Path) -> FastAPI:
    """The TMS app over the SQLite file at `db_path` (created if missing)."""
    db = Database(db_path, SCHEMA)
    app = FastAPI(title="Transport Management System (sandbox)", version="1.0")
    app.state.db = db
    missing = {404: {"description": "Unknown id"}}

    @app.get("/shipments/{shipment_id}", operation_id="tms_get_shipment", response_model=Shipment,
             summary="Get a shipment as the carrier billed it: carrier, tracking number, declared "
             "and billed weight, billed amount and any open weight dispute.", responses=missing)
    def get_shipment(shipment_id: ShipmentId) -> dict:
        with db.read() as conn:
            return _public(_raw(conn, shipment_id))

    @app.get("/weight-disputes/{dispute_id}", operation_id="tms_get_weight_dispute",
             response_model=WeightDispute, summary="Get a weight dispute and its status.", responses=missing)
    def get_dispute(dispute_id: DisputeId) -> WeightDispute:
        with db.read() as conn:
            return _dispute(conn, dispute_id)

    @app.post("/shipments/{shipment_id}/weight-disputes", operation_id="tms_open_weight_dispute",
              response_model=WeightDispute, status_code=201,
              summary="Open a weight dispute with the carrier, claiming the weight that should have "
              "been billed. At most one open dispute per shipment.",
              responses={**missing, 409: {"description": "A dispute is already open"}},
              openapi_extra={"x-opsagent-reversible": True,
                             "x-opsagent-inverse": "tms_withdraw_weight_dispute"})
    def open_dispute(shipment_id: ShipmentId, body: WeightDisputeIn,
                     options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _raw(conn, shipment_id)
            if before["open_dispute_id"] is not None:
                raise HTTPException(409, f"Shipment {shipment_id!r} already has an open weight dispute "
                                    f"({before['open_dispute_id']})")
            if body.claimed_weight_kg >= before["billed_weight_kg"]:
                raise HTTPException(422, f"claimed_weight_kg ({body.claimed_weight_kg}) must be below the "
                                    f"billed weight ({before['billed_weight_kg']} kg)")
            dispute = WeightDispute(dispute_id=next_id(conn, "weight_disputes", "WD"),
                                    shipment_id=shipment_id,
                                    billed_weight_kg=before["billed_weight_kg"], status="open",
                                    opened_at=utc_now(), **body.model_dump())
            conn.execute("INSERT INTO weight_disputes VALUES (:dispute_id, :shipment_id, :claimed_weight_kg, "
                         ":billed_weight_kg, :reason, :status, :opened_at, :closed_at)", dispute.model_dump())
            conn.execute("UPDATE shipments SET open_dispute_id = ? WHERE shipment_id = ?",
                         (dispute.dispute_id, shipment_id))
            data = dispute.model_dump(mode="json")
            after = {"shipment": _public(_raw(conn, shipment_id)), "dispute": data}
            return Change(body=data, before={"shipment": _public(before), "dispute": None},
                          after=after, status_code=201)

        return perform_write(db, operation="tms_open_weight_dispute", options=options, apply=apply,
                             request={"shipment_id": shipment_id, **body.model_dump()})

    @app.post("/weight-disputes/{dispute_id}/withdraw", operation_id="tms_withdraw_weight_dispute",
              response_model=WeightDispute, summary="Withdraw an open weight dispute.",
              responses={**missing, 409: {"description": "The dispute is not open"}},
              openapi_extra={"x-opsagent-reversible": True})
    def withdraw_dispute(dispute_id: DisputeId, options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _dispute(conn, dispute_id)
            if before.status != "open":
                raise HTTPException(409, f"Weight dispute {dispute_id!r} is {before.status}, not open")
            conn.execute("UPDATE weight_disputes SET status = 'withdrawn', closed_at = ? "
                         "WHERE dispute_id = ?",
                         (utc_now(), dispute_id))
            conn.execute("UPDATE shipments SET open_dispute_id = NULL WHERE open_dispute_id = ?",
                         (dispute_id,))
            after = _dispute(conn, dispute_id).model_dump(mode="json")
            return Change(body=after, before=before.model_dump(mode="json"), after=after)

        return perform_write(db, operation="tms_withdraw_weight_dispute", options=options, apply=apply,
                             request={"dispute_id": dispute_id})

    @app.post("/shipments/{shipment_id}/billed-weight", operation_id="tms_adjust_billed_weight",
              response_model=Shipment,
              summary="Change the billed weight of a shipment and re-rate its billed amount. "
              "Irreversible: it rewrites the carrier invoice line.", responses=missing,
              openapi_extra={"x-opsagent-reversible": False})
    def adjust_billed_weight(shipment_id: ShipmentId, body: BilledWeightIn,
                             options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _raw(conn, shipment_id)
            new_amount = amount(before["base_charge"], before["rate_per_kg"], body.billed_weight_kg)
            conn.execute("INSERT INTO billing_adjustments VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (next_id(conn, "billing_adjustments", "BA"), shipment_id, before["billed_weight_kg"],
                          body.billed_weight_kg, before["billed_amount"], new_amount, body.reason, utc_now()))
            conn.execute("UPDATE shipments SET billed_weight_kg = ?, billed_amount = ? WHERE shipment_id = ?",
                         (body.billed_weight_kg, new_amount, shipment_id))
            after = _public(_raw(conn, shipment_id))
            return Change(body=after, before=_public(before), after=after)

        return perform_write(db, operation="tms_adjust_billed_weight", options=options, apply=apply,
                             request={"shipment_id": shipment_id, **body.model_dump()})

    tms_tracking.add_routes(app, db)
    tms_delivery.add_routes(app, db)
    tms_pickups.add_routes(app, db)
    add_admin_upsert(app, db, "shipments", ShipmentRecord, key="shipment_id", prepare=lambda s: {
        **s.model_dump(), "billed_amount": amount(s.base_charge, s.rate_per_kg, s.billed_weight_kg)})
    app.include_router(admin_router(db))
    return app
