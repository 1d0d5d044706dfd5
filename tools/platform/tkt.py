"""The sandbox ticketing system: the exception queue, notes, and hand-over to a human team.

A ticket is `open` in the agents' queue, `assigned` once handed to a human team (escalated), or
`resolved`. A ticket a human team owns cannot be resolved through the API until it is unassigned.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import Depends, FastAPI
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

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
    row_or_404,
    utc_now,
    write_options,
)

TEAMS = {
    "finance": "Finance: receivables, refunds, inventory control",
    "customer_service": "Customer service: anything that needs the customer",
    "warehouse_ops": "Warehouse operations: stock, dispatch and floor checks",
    "carrier_relations": "Carrier relations: claims, traces and escalations with carriers",
    "customs": "Customs and trade compliance",
}
SCHEMA = """
CREATE TABLE IF NOT EXISTS teams (team_id TEXT PRIMARY KEY, description TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id TEXT PRIMARY KEY, exception_type TEXT NOT NULL, subject TEXT NOT NULL,
    description TEXT NOT NULL, entities TEXT NOT NULL, claim_amount REAL, currency TEXT,
    priority TEXT NOT NULL, status TEXT NOT NULL, team TEXT REFERENCES teams(team_id), resolution TEXT,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, resolved_at TEXT
);
CREATE TABLE IF NOT EXISTS ticket_notes (
    note_id TEXT PRIMARY KEY, ticket_id TEXT NOT NULL REFERENCES tickets(ticket_id), author TEXT NOT NULL,
    body TEXT NOT NULL, created_at TEXT NOT NULL
);
""" + "".join(f"INSERT OR IGNORE INTO teams VALUES ('{t}', '{d}');\n" for t, d in TEAMS.items())
# Columns whose values depend on time, on sequence counters or are free text: scoring compares
# only whether they are set; notes are commentary and not compared at all (see opsagent.evals.scoring).
VOLATILE = {"tickets": {"resolution"}, "ticket_notes": {"note_id", "body", "author"}}
COMMENTARY = {"ticket_notes"}
AUTHOR = "opsagent"

TicketId = Annotated[str, PathParam(description="Ticket id, e.g. TKT-20417733.")]
Team = Literal["finance", "customer_service", "warehouse_ops", "carrier_relations", "customs"]
Text = Annotated[str, Field(min_length=1, max_length=1000)]


class TeamInfo(BaseModel):
    team_id: Team
    description: str


class Note(BaseModel):
    note_id: str
    ticket_id: str
    author: str
    body: str
    created_at: str


class TicketRecord(BaseModel):
    """A ticket as ops filed it (admin seeding input)."""

    ticket_id: str
    exception_type: str
    subject: str
    description: str
    entities: dict[str, str] = Field(description="The records the ticket is about.")
    claim_amount: float | None = Field(None, description="For claims: the amount the customer asks for.")
    currency: str | None = None
    priority: Literal["low", "normal", "high"] = "normal"
    status: Literal["open", "assigned", "resolved"] = "open"
    team: Team | None = None
    resolution: str | None = None
    created_at: str
    updated_at: str
    resolved_at: str | None = None


class Ticket(TicketRecord):
    status: Literal["open", "assigned", "resolved"] = Field(
        description="open: in the agents' queue; assigned: a human team owns it; resolved.")
    notes: list[Note] = Field(description="Notes, oldest first.")


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    body: Text


class AssignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    team: Team = Field(description="The human team that takes the ticket over.")
    note: Text = Field(description="What the team needs to know: what was checked and why it is theirs.")


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resolution: Text = Field(description="What was done, in one or two sentences.")


def _ticket(conn: sqlite3.Connection, ticket_id: str) -> Ticket:
    found = row_or_404(conn, "Ticket", ticket_id, "SELECT * FROM tickets WHERE ticket_id = ?", ticket_id)
    notes = [Note(**r) for r in conn.execute(
        "SELECT * FROM ticket_notes WHERE ticket_id = ? ORDER BY created_at, note_id", (ticket_id,))]
    return Ticket(**{**found, "entities": json.loads(found["entities"])}, notes=notes)


def _note(conn: sqlite3.Connection, ticket_id: str, body: str) -> Note:
    note = Note(note_id=next_id(conn, "ticket_notes", "NT"), ticket_id=ticket_id, author=AUTHOR, body=body,
                created_at=utc_now())
    insert(conn, "ticket_notes", note.model_dump())
    return note


def create_app(db_path: Path) -> FastAPI:
    """The ticketing app over the SQLite file at `db_path` (created if missing)."""
    db = Database(db_path, SCHEMA)
    app = FastAPI(title="Ticketing: the exception queue (sandbox)", version="1.0")
    app.state.db = db
    missing = {404: {"description": "Unknown ticket"}}

    def ticket_write(operation: str, ticket_id: str, body: BaseModel | None, options: WriteOptions,
                     change: Callable[[sqlite3.Connection, Ticket], dict | None], status_code: int = 200):
        """Run `change(conn, before) -> response body | None` on a ticket; the diff is the ticket."""

        def apply(conn: sqlite3.Connection) -> Change:
            before = _ticket(conn, ticket_id)
            result = change(conn, before)
            after = _ticket(conn, ticket_id).model_dump(mode="json")
            return Change(body=result or after, before=before.model_dump(mode="json"), after=after,
                          status_code=status_code)

        request = {"ticket_id": ticket_id, **(body.model_dump() if body else {})}
        return perform_write(db, operation=operation, options=options, apply=apply, request=request)

    @app.get("/tickets/{ticket_id}", operation_id="tkt_get_ticket", response_model=Ticket, responses=missing,
             summary="Get a ticket of the exception queue: what ops wrote, the records it is about, any "
             "claimed amount, its status, team and notes.")
    def get_ticket(ticket_id: TicketId) -> Ticket:
        with db.read() as conn:
            return _ticket(conn, ticket_id)

    @app.get("/teams", operation_id="tkt_list_teams", response_model=list[TeamInfo],
             summary="List the human teams tickets can be assigned to.")
    def list_teams() -> list[TeamInfo]:
        with db.read() as conn:
            return [TeamInfo(**r) for r in conn.execute("SELECT * FROM teams ORDER BY team_id")]

    @app.post("/tickets/{ticket_id}/notes", operation_id="tkt_add_note", response_model=Note, status_code=201,
              summary="Add a note to a ticket. Irreversible: notes are append-only.", responses=missing,
              openapi_extra={"x-opsagent-reversible": False})
    def add_note(ticket_id: TicketId, body: NoteIn, options: Annotated[WriteOptions, Depends(write_options)]):
        return ticket_write("tkt_add_note", ticket_id, body, options, status_code=201,
                            change=lambda conn, _: _note(conn, ticket_id, body.body).model_dump())

    @app.post("/tickets/{ticket_id}/assign", operation_id="tkt_assign_ticket", response_model=Ticket,
              summary="Escalate: hand the ticket to a human team with a note of what was checked.",
              responses={**missing, 409: {"description": "Resolved, or already with that team"}},
              openapi_extra={"x-opsagent-reversible": True, "x-opsagent-inverse": "tkt_unassign_ticket"})
    def assign(ticket_id: TicketId, body: AssignIn, options: Annotated[WriteOptions, Depends(write_options)]):
        def change(conn: sqlite3.Connection, before: Ticket) -> None:
            if before.status == "resolved" or before.team == body.team:
                raise conflict(f"Ticket {ticket_id!r} is {before.status}"
                               + (f" with {before.team}" if before.team else ""))
            conn.execute("UPDATE tickets SET status = 'assigned', team = ?, updated_at = ? "
                         "WHERE ticket_id = ?", (body.team, utc_now(), ticket_id))
            _note(conn, ticket_id, f"Assigned to {body.team}: {body.note}")

        return ticket_write("tkt_assign_ticket", ticket_id, body, options, change)

    @app.post("/tickets/{ticket_id}/unassign", operation_id="tkt_unassign_ticket", response_model=Ticket,
              summary="Take a ticket back from the human team into the agents' queue.",
              responses={**missing, 409: {"description": "Not assigned"}},
              openapi_extra={"x-opsagent-reversible": True, "x-opsagent-inverse": "tkt_assign_ticket"})
    def unassign(ticket_id: TicketId, options: Annotated[WriteOptions, Depends(write_options)]):
        def change(conn: sqlite3.Connection, before: Ticket) -> None:
            if before.status != "assigned":
                raise conflict(f"Ticket {ticket_id!r} is {before.status}, not assigned")
            conn.execute("UPDATE tickets SET status = 'open', team = NULL, updated_at = ? "
                         "WHERE ticket_id = ?", (utc_now(), ticket_id))

        return ticket_write("tkt_unassign_ticket", ticket_id, None, options, change)

    @app.post("/tickets/{ticket_id}/resolve", operation_id="tkt_resolve_ticket", response_model=Ticket,
              summary="Close a ticket of the agents' queue with what was done.",
              responses={**missing, 409: {"description": "Already resolved, or a human team owns it"}},
              openapi_extra={"x-opsagent-reversible": True, "x-opsagent-inverse": "tkt_reopen_ticket"})
    def resolve(ticket_id: TicketId, body: ResolveIn,
                options: Annotated[WriteOptions, Depends(write_options)]):
        def change(conn: sqlite3.Connection, before: Ticket) -> None:
            if before.status != "open":
                raise conflict(f"Ticket {ticket_id!r} is {before.status}"
                               + (f" with {before.team}; that team closes it" if before.team else ""))
            now = utc_now()
            conn.execute("UPDATE tickets SET status = 'resolved', resolution = ?, updated_at = ?, "
                         "resolved_at = ? WHERE ticket_id = ?", (body.resolution, now, now, ticket_id))

        return ticket_write("tkt_resolve_ticket", ticket_id, body, options, change)

    @app.post("/tickets/{ticket_id}/reopen", operation_id="tkt_reopen_ticket", response_model=Ticket,
              summary="Reopen a resolved ticket into the agents' queue.",
              responses={**missing, 409: {"description": "Not resolved"}},
              openapi_extra={"x-opsagent-reversible": True, "x-opsagent-inverse": "tkt_resolve_ticket"})
    def reopen(ticket_id: TicketId, options: Annotated[WriteOptions, Depends(write_options)]):
        def change(conn: sqlite3.Connection, before: Ticket) -> None:
            if before.status != "resolved":
                raise conflict(f"Ticket {ticket_id!r} is {before.status}, not resolved")
            conn.execute("UPDATE tickets SET status = 'open', resolution = NULL, resolved_at = NULL, "
                         "updated_at = ? WHERE ticket_id = ?", (utc_now(), ticket_id))

        return ticket_write("tkt_reopen_ticket", ticket_id, None, options, change)

    add_admin_upsert(app, db, "tickets", TicketRecord, key="ticket_id",
                     prepare=lambda t: {**t.model_dump(), "entities": json.dumps(t.entities, sort_keys=True)})
    app.include_router(admin_router(db))
    return app
