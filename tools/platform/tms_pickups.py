"""The TMS's pickups: when each carrier collects parcels at a site, and reschedules after a miss."""

from __future__ import annotations

import sqlite3
from datetime import date
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
CREATE TABLE IF NOT EXISTS pickups (
    pickup_id TEXT PRIMARY KEY, carrier TEXT NOT NULL, site TEXT NOT NULL, scheduled_date TEXT NOT NULL,
    time_window TEXT NOT NULL, parcels INTEGER NOT NULL, status TEXT NOT NULL,
    next_available_date TEXT, reschedules INTEGER NOT NULL DEFAULT 0, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pickup_changes (
    change_id TEXT PRIMARY KEY, pickup_id TEXT NOT NULL REFERENCES pickups(pickup_id),
    old_date TEXT NOT NULL, new_date TEXT NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL
);
"""
VOLATILE = {"pickup_changes": {"change_id", "reason"}}

PickupId = Annotated[str, PathParam(description="Pickup id, e.g. PU-7731025.")]
ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"


class Pickup(BaseModel):
    """A scheduled collection of parcels by a carrier at one site."""

    pickup_id: str
    carrier: str
    site: str
    scheduled_date: str = Field(pattern=ISO_DATE)
    time_window: str = Field(description="e.g. 14:00-16:00")
    parcels: int = Field(ge=1)
    status: Literal["scheduled", "missed", "completed", "cancelled"] = Field(
        description="missed: the driver did not come; completed: the carrier recorded the collection.")
    next_available_date: str | None = Field(
        None, pattern=ISO_DATE, description="The carrier's earliest free pickup slot (YYYY-MM-DD).")
    reschedules: int = 0
    updated_at: str


class RescheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pickup_date: str = Field(pattern=ISO_DATE, description="The new pickup date, YYYY-MM-DD, no earlier "
                             "than the carrier's next available date.")
    reason: str = Field(min_length=1, max_length=500, description="Why, e.g. the driver did not show up.")


def _pickup(conn: sqlite3.Connection, pickup_id: str) -> Pickup:
    found = row_or_404(conn, "Pickup", pickup_id, "SELECT * FROM pickups WHERE pickup_id = ?", pickup_id)
    return Pickup(**found)


def add_routes(app: FastAPI, db: Database) -> None:
    """Pickup endpoints and their admin seeding route."""

    @app.get("/pickups/{pickup_id}", operation_id="tms_get_pickup", response_model=Pickup,
             summary="Get a carrier pickup: site, date, window, parcels, status and the carrier's next "
             "available slot.", responses={404: {"description": "Unknown pickup"}})
    def get_pickup(pickup_id: PickupId) -> Pickup:
        with db.read() as conn:
            return _pickup(conn, pickup_id)

    @app.post("/pickups/{pickup_id}/reschedule", operation_id="tms_reschedule_pickup", response_model=Pickup,
              summary="Book a new date for a missed or scheduled pickup (not before the carrier's next "
              "available date).",
              responses={404: {"description": "Unknown pickup"},
                         409: {"description": "The pickup was completed or cancelled"},
                         422: {"description": "Date before the carrier's next available slot"}},
              openapi_extra={"x-opsagent-reversible": True, "x-opsagent-inverse": "tms_reschedule_pickup"})
    def reschedule(pickup_id: PickupId, body: RescheduleIn,
                   options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _pickup(conn, pickup_id)
            if before.status in ("completed", "cancelled"):
                raise conflict(f"Pickup {pickup_id!r} is {before.status}; it cannot be rescheduled")
            try:
                wanted = date.fromisoformat(body.pickup_date)
            except ValueError:
                raise HTTPException(422, f"pickup_date {body.pickup_date!r} is not a date") from None
            earliest = before.next_available_date
            if earliest is not None and wanted < date.fromisoformat(earliest):
                raise HTTPException(422, f"The carrier's next available pickup date is {earliest}")
            now = utc_now()
            insert(conn, "pickup_changes", {
                "change_id": next_id(conn, "pickup_changes", "PC"), "pickup_id": pickup_id,
                "old_date": before.scheduled_date, "new_date": body.pickup_date, "reason": body.reason,
                "created_at": now})
            conn.execute("UPDATE pickups SET scheduled_date = ?, status = 'scheduled', "
                         "reschedules = reschedules + 1, updated_at = ? WHERE pickup_id = ?",
                         (body.pickup_date, now, pickup_id))
            after = _pickup(conn, pickup_id).model_dump(mode="json")
            return Change(body=after, before=before.model_dump(mode="json"), after=after)

        return perform_write(db, operation="tms_reschedule_pickup", options=options, apply=apply,
                             request={"pickup_id": pickup_id, **body.model_dump()})

    add_admin_upsert(app, db, "pickups", Pickup, key="pickup_id")
