"""The WMS's inventory side: items, storage locations, stock per location, cycle counts, adjustments.

A stock record's `count_status` says whether its quantity is backed by a physical count:
`counted` (set by a completed cycle count, nothing moved since), `uncounted`, or `count_pending`
(a cycle count was requested and the floor has not counted yet).
"""

from __future__ import annotations

import sqlite3
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException
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
CREATE TABLE IF NOT EXISTS items (
    sku TEXT PRIMARY KEY, description TEXT NOT NULL, uom TEXT NOT NULL, unit_weight_kg REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS locations (
    location_id TEXT PRIMARY KEY, site TEXT NOT NULL, zone TEXT NOT NULL, kind TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS stock (
    location_id TEXT NOT NULL REFERENCES locations(location_id), sku TEXT NOT NULL REFERENCES items(sku),
    quantity INTEGER NOT NULL, count_status TEXT NOT NULL, last_count_id TEXT, updated_at TEXT NOT NULL,
    PRIMARY KEY (location_id, sku)
);
CREATE TABLE IF NOT EXISTS cycle_counts (
    count_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, sku TEXT NOT NULL, reason TEXT NOT NULL,
    priority TEXT NOT NULL, status TEXT NOT NULL, prior_count_status TEXT NOT NULL,
    counted_quantity INTEGER, created_at TEXT NOT NULL, completed_at TEXT, cancelled_at TEXT,
    FOREIGN KEY (location_id, sku) REFERENCES stock(location_id, sku)
);
CREATE TABLE IF NOT EXISTS stock_adjustments (
    adjustment_id TEXT PRIMARY KEY, location_id TEXT NOT NULL, sku TEXT NOT NULL,
    quantity_delta INTEGER NOT NULL, old_quantity INTEGER NOT NULL, new_quantity INTEGER NOT NULL,
    reason TEXT NOT NULL, created_at TEXT NOT NULL,
    FOREIGN KEY (location_id, sku) REFERENCES stock(location_id, sku)
);
"""
VOLATILE = {
    "stock": {"last_count_id"},
    "cycle_counts": {"count_id", "reason"},
    "stock_adjustments": {"adjustment_id", "reason"},
}

LocationId = Annotated[str, PathParam(description="Storage location id, e.g. DUS-A-03-2.")]
Sku = Annotated[str, PathParam(description="Item SKU, e.g. SKU-40213.")]
CountStatus = Literal["counted", "uncounted", "count_pending"]
Reason = Annotated[str, Field(min_length=1, max_length=500, description="Why, in plain words.")]


class Item(BaseModel):
    sku: str
    description: str
    uom: str = Field(description="Unit of measure, e.g. EA, BOX.")
    unit_weight_kg: float = Field(gt=0)


class Location(BaseModel):
    location_id: str
    site: str
    zone: str
    kind: str = Field(description="bin, pallet, floor, ...")


class StockRecord(BaseModel):
    """Admin seeding input: the quantity of one SKU at one location."""

    location_id: str
    sku: str
    quantity: int = Field(ge=0)
    count_status: CountStatus
    last_count_id: str | None = None
    updated_at: str


class Stock(StockRecord):
    """Stock of one SKU at one location, with its item, site and last cycle count."""

    site: str
    description: str
    uom: str
    count_status: CountStatus = Field(
        description="counted: the quantity was confirmed by a completed cycle count and nothing moved "
        "since; uncounted: not confirmed by a count; count_pending: a cycle count is requested.")
    last_counted_quantity: int | None = None
    last_counted_at: str | None = None


class CycleCount(BaseModel):
    count_id: str
    location_id: str
    sku: str
    reason: str
    priority: Literal["normal", "urgent"]
    status: Literal["requested", "completed", "cancelled"]
    prior_count_status: CountStatus
    counted_quantity: int | None = None
    created_at: str
    completed_at: str | None = None
    cancelled_at: str | None = None


class CycleCountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason
    priority: Literal["normal", "urgent"] = Field("normal", description="Floor priority.")


class StockAdjustmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quantity_delta: int = Field(description="Units to add (positive) or remove (negative); not 0.")
    reason: Reason


class StockAdjustment(BaseModel):
    adjustment_id: str
    location_id: str
    sku: str
    quantity_delta: int
    old_quantity: int
    new_quantity: int
    reason: str
    created_at: str


def _stock(conn: sqlite3.Connection, location_id: str, sku: str) -> Stock:
    found = row_or_404(conn, "Stock record", f"{sku} at {location_id}",
                       "SELECT s.*, l.site, i.description, i.uom, "
                "c.counted_quantity AS last_counted_quantity, c.completed_at AS last_counted_at "
                "FROM stock s JOIN locations l USING (location_id) "
                "JOIN items i USING (sku) LEFT JOIN cycle_counts c ON c.count_id = s.last_count_id "
                "WHERE s.location_id = ? AND s.sku = ?", location_id, sku)
    return Stock(**found)


def _count(conn: sqlite3.Connection, count_id: str) -> CycleCount:
    found = row_or_404(conn, "Cycle count", count_id,
                       "SELECT * FROM cycle_counts WHERE count_id = ?", count_id)
    return CycleCount(**found)


def add_routes(app: FastAPI, db: Database) -> None:
    """The stock, cycle-count and adjustment endpoints, and their admin seeding routes."""
    missing = {404: {"description": "Unknown location, SKU or count"}}

    @app.get("/locations/{location_id}/stock/{sku}", operation_id="wms_get_stock", response_model=Stock,
             summary="Get the quantity of one SKU at one location, whether a cycle count confirmed it "
             "(count_status) and the last count.", responses=missing)
    def get_stock(location_id: LocationId, sku: Sku) -> Stock:
        with db.read() as conn:
            return _stock(conn, location_id, sku)

    @app.get("/cycle-counts/{count_id}", operation_id="wms_get_cycle_count", response_model=CycleCount,
             summary="Get a cycle count request and its result.", responses=missing)
    def get_count(count_id: Annotated[str, PathParam(description="Cycle count id, e.g. CC-000004.")]):
        with db.read() as conn:
            return _count(conn, count_id)

    @app.post("/locations/{location_id}/stock/{sku}/cycle-counts", operation_id="wms_request_cycle_count",
              response_model=CycleCount, status_code=201,
              summary="Ask the floor to count one SKU at one location. At most one pending per record.",
              responses={**missing, 409: {"description": "A count is already pending"}},
              openapi_extra={"x-opsagent-reversible": True, "x-opsagent-inverse": "wms_cancel_cycle_count"})
    def request_count(location_id: LocationId, sku: Sku, body: CycleCountIn,
                      options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _stock(conn, location_id, sku)
            if before.count_status == "count_pending":
                raise conflict(f"A cycle count of {sku} at {location_id} is already pending")
            count = CycleCount(count_id=next_id(conn, "cycle_counts", "CC"), location_id=location_id, sku=sku,
                               status="requested", prior_count_status=before.count_status,
                               created_at=utc_now(), **body.model_dump())
            insert(conn, "cycle_counts", count.model_dump())
            conn.execute("UPDATE stock SET count_status = 'count_pending' WHERE location_id = ? AND sku = ?",
                         (location_id, sku))
            data = count.model_dump(mode="json")
            after = {"stock": _stock(conn, location_id, sku).model_dump(mode="json"), "cycle_count": data}
            return Change(body=data, before={"stock": before.model_dump(mode="json"), "cycle_count": None},
                          after=after, status_code=201)

        return perform_write(db, operation="wms_request_cycle_count", options=options, apply=apply,
                             request={"location_id": location_id, "sku": sku, **body.model_dump()})

    @app.post("/cycle-counts/{count_id}/cancel", operation_id="wms_cancel_cycle_count",
              response_model=CycleCount, summary="Cancel a pending cycle count request.",
              responses={**missing, 409: {"description": "Not pending"}},
              openapi_extra={"x-opsagent-reversible": True})
    def cancel_count(count_id: Annotated[str, PathParam(description="Cycle count id, e.g. CC-000004.")],
                     options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _count(conn, count_id)
            if before.status != "requested":
                raise conflict(f"Cycle count {count_id!r} is {before.status}, not pending")
            conn.execute("UPDATE cycle_counts SET status = 'cancelled', cancelled_at = ? WHERE count_id = ?",
                         (utc_now(), count_id))
            conn.execute("UPDATE stock SET count_status = ? WHERE location_id = ? AND sku = ?",
                         (before.prior_count_status, before.location_id, before.sku))
            after = _count(conn, count_id).model_dump(mode="json")
            return Change(body=after, before=before.model_dump(mode="json"), after=after)

        return perform_write(db, operation="wms_cancel_cycle_count", options=options, apply=apply,
                             request={"count_id": count_id})

    @app.post("/locations/{location_id}/stock/{sku}/adjustments", operation_id="wms_adjust_stock",
              response_model=StockAdjustment, status_code=201,
              summary="Book units into or out of a location (found, damaged, lost). Irreversible: it "
              "posts an inventory movement; the quantity is then no longer backed by a count.",
              responses={**missing, 422: {"description": "Zero delta or negative resulting stock"}},
              openapi_extra={"x-opsagent-reversible": False})
    def adjust_stock(location_id: LocationId, sku: Sku, body: StockAdjustmentIn,
                     options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _stock(conn, location_id, sku)
            new = before.quantity + body.quantity_delta
            if body.quantity_delta == 0 or new < 0:
                raise HTTPException(422, f"quantity_delta {body.quantity_delta} would leave {new} units of "
                                    f"{sku} at {location_id}; it must be non-zero and leave at least 0")
            adjustment = StockAdjustment(
                adjustment_id=next_id(conn, "stock_adjustments", "SA"), location_id=location_id, sku=sku,
                quantity_delta=body.quantity_delta, old_quantity=before.quantity, new_quantity=new,
                reason=body.reason, created_at=utc_now())
            insert(conn, "stock_adjustments", adjustment.model_dump())
            conn.execute("UPDATE stock SET quantity = ?, count_status = 'uncounted', updated_at = ? "
                         "WHERE location_id = ? AND sku = ?", (new, adjustment.created_at, location_id, sku))
            data = adjustment.model_dump(mode="json")
            after = {"stock": _stock(conn, location_id, sku).model_dump(mode="json"), "adjustment": data}
            return Change(body=data, before={"stock": before.model_dump(mode="json"), "adjustment": None},
                          after=after, status_code=201)

        return perform_write(db, operation="wms_adjust_stock", options=options, apply=apply,
                             request={"location_id": location_id, "sku": sku, **body.model_dump()})

    add_admin_upsert(app, db, "items", Item, key="sku")
    add_admin_upsert(app, db, "locations", Location, key="location_id")
    add_admin_upsert(app, db, "stock", StockRecord, key="location_id, sku")
    add_admin_upsert(app, db, "cycle-counts", CycleCount, key="count_id")
