"""The sandbox ERP: customers, invoices, credit notes and refunds, and inventory on the books.

An invoice's `duplicate_check` is the ERP's own duplicate detection over the live invoices (not
void, not refunded) of the same customer, shipment and kind: `duplicate` (an earlier invoice has
the same amount: this one is the copy), `original` (a later one is its copy), `amount_differs`
(another invoice exists with a different amount) or `none`.
"""

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

SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    customer_id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, street TEXT NOT NULL,
    postcode TEXT NOT NULL, city TEXT NOT NULL, country TEXT NOT NULL, address_status TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS invoices (
    invoice_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL REFERENCES customers(customer_id),
    order_id TEXT, shipment_id TEXT, kind TEXT NOT NULL, amount REAL NOT NULL, currency TEXT NOT NULL,
    status TEXT NOT NULL, issued_at TEXT NOT NULL, paid_at TEXT, voided_at TEXT, void_reason TEXT
);
CREATE TABLE IF NOT EXISTS credit_notes (
    credit_id TEXT PRIMARY KEY, invoice_id TEXT NOT NULL REFERENCES invoices(invoice_id),
    amount REAL NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS refunds (
    refund_id TEXT PRIMARY KEY, invoice_id TEXT NOT NULL REFERENCES invoices(invoice_id),
    amount REAL NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inventory (
    site TEXT NOT NULL, sku TEXT NOT NULL, description TEXT NOT NULL, book_quantity INTEGER NOT NULL,
    unit_cost REAL NOT NULL, currency TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (site, sku)
);
CREATE TABLE IF NOT EXISTS inventory_adjustments (
    adjustment_id TEXT PRIMARY KEY, site TEXT NOT NULL, sku TEXT NOT NULL, old_quantity INTEGER NOT NULL,
    new_quantity INTEGER NOT NULL, value_change REAL NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL,
    FOREIGN KEY (site, sku) REFERENCES inventory(site, sku)
);
"""
# Columns whose values depend on time, on sequence counters or are free text: scoring compares
# only whether they are set (see opsagent.evals.scoring).
VOLATILE = {
    "invoices": {"void_reason"},
    "credit_notes": {"credit_id", "reason"},
    "refunds": {"refund_id", "reason"},
    "inventory_adjustments": {"adjustment_id", "reason"},
}

InvoiceId = Annotated[str, PathParam(description="Invoice id, e.g. INV-25104417.")]
Site = Annotated[str, PathParam(description="Site code, e.g. DUS.")]
Sku = Annotated[str, PathParam(description="Item SKU, e.g. SKU-40213.")]
Reason = Annotated[str, Field(min_length=1, max_length=500,
                              description="Why, in plain words (kept on file).")]
Money = Annotated[float, Field(gt=0, description="Amount in the invoice currency.")]
_LIVE = ("open", "paid")


class Customer(BaseModel):
    """A customer and the billing/delivery address on record."""

    customer_id: str
    name: str
    email: str
    street: str
    postcode: str
    city: str
    country: str = Field(description="ISO 3166-1 alpha-2 country code.")
    address_status: Literal["verified", "unverified"] = Field(
        description="'verified' if the address of record was confirmed with the customer.")
    updated_at: str


class InvoiceRecord(BaseModel):
    """An invoice as stored (admin seeding input)."""

    invoice_id: str
    customer_id: str
    order_id: str | None = None
    shipment_id: str | None = None
    kind: Literal["goods", "freight", "commercial"] = Field(
        description="goods: what the customer buys; freight: shipping charges; commercial: the customs copy.")
    amount: float = Field(gt=0)
    currency: str = "EUR"
    status: Literal["open", "paid", "void", "refunded"]
    issued_at: str
    paid_at: str | None = None
    voided_at: str | None = None
    void_reason: str | None = None


class Invoice(InvoiceRecord):
    """An invoice with what was credited or refunded on it and the ERP's duplicate check."""

    credited_amount: float
    refunded_amount: float
    open_balance: float = Field(description="amount - credited - refunded: the most that can still be "
                                "credited or refunded.")
    duplicate_check: Literal["duplicate", "original", "amount_differs", "none"]
    duplicate_of: str | None = Field(description="The other invoice the duplicate check refers to.")


class MoneyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Money
    reason: Reason


class VoidIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


class _MoneyMovement(BaseModel):
    invoice_id: str
    amount: float
    reason: str
    created_at: str


class CreditNote(_MoneyMovement):
    credit_id: str


class Refund(_MoneyMovement):
    refund_id: str


class InventoryRecord(BaseModel):
    """One SKU at one site on the books (admin seeding input)."""

    site: str
    sku: str
    description: str
    book_quantity: int = Field(ge=0)
    unit_cost: float = Field(gt=0)
    currency: str = "EUR"
    updated_at: str


class Inventory(InventoryRecord):
    book_value: float = Field(description="book_quantity * unit_cost.")


class BookQuantityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    book_quantity: int = Field(ge=0, description="The quantity the books should show, e.g. the counted one.")
    reason: Reason


class InventoryAdjustment(BaseModel):
    adjustment_id: str
    site: str
    sku: str
    old_quantity: int
    new_quantity: int
    value_change: float = Field(description="Change of the book value, in the inventory currency.")
    reason: str
    created_at: str


def _invoice(conn: sqlite3.Connection, invoice_id: str) -> Invoice:
    found = row_or_404(conn, "Invoice", invoice_id, "SELECT * FROM invoices WHERE invoice_id = ?", invoice_id)
    credited = conn.execute("SELECT COALESCE(SUM(amount), 0) FROM credit_notes WHERE invoice_id = ?",
                            (invoice_id,)).fetchone()[0]
    refunded = conn.execute("SELECT COALESCE(SUM(amount), 0) FROM refunds WHERE invoice_id = ?",
                            (invoice_id,)).fetchone()[0]
    check, other = _duplicate_check(conn, found)
    return Invoice(**found, credited_amount=round(credited, 2), refunded_amount=round(refunded, 2),
                   open_balance=round(found["amount"] - credited - refunded, 2), duplicate_check=check,
                   duplicate_of=other)


def _duplicate_check(conn: sqlite3.Connection, inv: dict) -> tuple[str, str | None]:
    if inv["shipment_id"] is None or inv["status"] not in _LIVE:
        return "none", None
    others = [dict(r) for r in conn.execute(
        "SELECT invoice_id, amount, issued_at FROM invoices WHERE shipment_id = ? AND customer_id = ? AND "
        "kind = ? AND invoice_id != ? AND status IN ('open', 'paid') ORDER BY issued_at, invoice_id",
        (inv["shipment_id"], inv["customer_id"], inv["kind"], inv["invoice_id"]))]
    mine = (inv["issued_at"], inv["invoice_id"])
    for o in others:
        if abs(o["amount"] - inv["amount"]) < 0.005:
            return ("duplicate" if (o["issued_at"], o["invoice_id"]) < mine else "original"), o["invoice_id"]
    return ("amount_differs", others[0]["invoice_id"]) if others else ("none", None)


def _inventory(conn: sqlite3.Connection, site: str, sku: str) -> Inventory:
    found = row_or_404(conn, "Inventory record", f"{sku} at {site}",
                       "SELECT * FROM inventory WHERE site = ? AND sku = ?", site, sku)
    return Inventory(**found, book_value=round(found["book_quantity"] * found["unit_cost"], 2))


def create_app(db_path: Path) -> FastAPI:
    """The ERP app over the SQLite file at `db_path` (created if missing)."""
    db = Database(db_path, SCHEMA)
    app = FastAPI(title="ERP: billing and inventory valuation (sandbox)", version="1.0")
    app.state.db = db
    missing = {404: {"description": "Unknown id"}}

    @app.get("/customers/{customer_id}", operation_id="erp_get_customer", response_model=Customer,
             summary="Get a customer with the address on record and whether it is verified.",
             responses=missing)
    def get_customer(customer_id: Annotated[str, PathParam(description="Customer id, e.g. CUST-48213.")]):
        with db.read() as conn:
            found = row_or_404(conn, "Customer", customer_id,
                               "SELECT * FROM customers WHERE customer_id = ?", customer_id)
        return Customer(**found)

    @app.get("/invoices/{invoice_id}", operation_id="erp_get_invoice", response_model=Invoice,
             summary="Get an invoice: amount, status (open, paid, void, refunded), credits and refunds on "
             "it, open balance, and the ERP's duplicate check.", responses=missing)
    def get_invoice(invoice_id: InvoiceId) -> Invoice:
        with db.read() as conn:
            return _invoice(conn, invoice_id)

    @app.get("/orders/{order_id}/commercial-invoice", operation_id="erp_get_commercial_invoice",
             response_model=Invoice, responses={404: {"description": "No commercial invoice for the order"}},
             summary="Get the commercial invoice (the customs copy) issued for an order, if there is one.")
    def get_commercial_invoice(order_id: Annotated[str, PathParam(description="Order id, e.g. SO-4410021.")]):
        with db.read() as conn:
            found = row_or_404(conn, "Commercial invoice for order", order_id,
                               "SELECT invoice_id FROM invoices WHERE order_id = ? AND kind = 'commercial' "
                               "AND status != 'void' ORDER BY issued_at DESC LIMIT 1", order_id)
            return _invoice(conn, found["invoice_id"])

    def money_write(operation: str, model: type[CreditNote | Refund], invoice_id: str, body: MoneyIn,
                    options: WriteOptions, allowed: tuple[str, ...]):
        """A credit note or a refund on an invoice, at most its open balance."""
        table, id_column, prefix = (("credit_notes", "credit_id", "CN") if model is CreditNote
                                    else ("refunds", "refund_id", "RF"))

        def apply(conn: sqlite3.Connection) -> Change:
            before = _invoice(conn, invoice_id)
            if before.status not in allowed:
                raise conflict(f"Invoice {invoice_id!r} is {before.status}; {operation} needs "
                               f"{' or '.join(allowed)}")
            if body.amount > before.open_balance + 1e-9:
                raise HTTPException(422, f"amount {body.amount:.2f} exceeds the open balance "
                                    f"{before.open_balance:.2f} of invoice {invoice_id!r}")
            movement = model(**{id_column: next_id(conn, table, prefix)}, invoice_id=invoice_id,
                             amount=round(body.amount, 2), reason=body.reason, created_at=utc_now())
            record = movement.model_dump()
            insert(conn, table, record)
            if model is Refund and body.amount >= before.open_balance - 1e-9:
                conn.execute("UPDATE invoices SET status = 'refunded' WHERE invoice_id = ?", (invoice_id,))
            after = _invoice(conn, invoice_id).model_dump(mode="json")
            return Change(body=record, before=before.model_dump(mode="json"), after=after, status_code=201)

        return perform_write(db, operation=operation, options=options, apply=apply,
                             request={"invoice_id": invoice_id, **body.model_dump()})

    @app.post("/invoices/{invoice_id}/credit-notes", operation_id="erp_issue_credit", status_code=201,
              response_model=CreditNote,
              summary="Issue a credit note on an open or paid invoice (e.g. for a damage claim), at most its "
              "open balance. Irreversible: a credit note is a booked accounting document.",
              responses={**missing, 409: {"description": "Invoice void or refunded"},
                         422: {"description": "Amount above the open balance"}},
              openapi_extra={"x-opsagent-reversible": False})
    def issue_credit(invoice_id: InvoiceId, body: MoneyIn,
                     options: Annotated[WriteOptions, Depends(write_options)]):
        return money_write("erp_issue_credit", CreditNote, invoice_id, body, options, _LIVE)

    @app.post("/invoices/{invoice_id}/refunds", operation_id="erp_issue_refund", status_code=201,
              response_model=Refund,
              summary="Pay money back on a paid invoice, at most its open balance; a full refund marks the "
              "invoice refunded. Irreversible: the money leaves the company.",
              responses={**missing, 409: {"description": "Invoice not paid"},
                         422: {"description": "Amount above the open balance"}},
              openapi_extra={"x-opsagent-reversible": False})
    def issue_refund(invoice_id: InvoiceId, body: MoneyIn,
                     options: Annotated[WriteOptions, Depends(write_options)]):
        return money_write("erp_issue_refund", Refund, invoice_id, body, options, ("paid",))

    @app.post("/invoices/{invoice_id}/void", operation_id="erp_void_invoice", response_model=Invoice,
              summary="Void an open invoice that should not exist (e.g. a duplicate). Only open invoices "
              "without credit notes. Irreversible.",
              responses={**missing, 409: {"description": "Not open, or credited"}},
              openapi_extra={"x-opsagent-reversible": False})
    def void_invoice(invoice_id: InvoiceId, body: VoidIn,
                     options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _invoice(conn, invoice_id)
            if before.status != "open" or before.credited_amount:
                raise conflict(f"Invoice {invoice_id!r} is {before.status} with {before.credited_amount:.2f} "
                               "credited; only open invoices without credit notes can be voided")
            conn.execute("UPDATE invoices SET status = 'void', voided_at = ?, void_reason = ? "
                         "WHERE invoice_id = ?", (utc_now(), body.reason, invoice_id))
            after = _invoice(conn, invoice_id).model_dump(mode="json")
            return Change(body=after, before=before.model_dump(mode="json"), after=after)

        return perform_write(db, operation="erp_void_invoice", options=options, apply=apply,
                             request={"invoice_id": invoice_id, **body.model_dump()})

    @app.get("/inventory/{site}/{sku}", operation_id="erp_get_inventory", response_model=Inventory,
             summary="Get one SKU at one site as the books show it: quantity, unit cost and book value.",
             responses={404: {"description": "The SKU is not on the books at this site"}})
    def get_inventory(site: Site, sku: Sku) -> Inventory:
        with db.read() as conn:
            return _inventory(conn, site, sku)

    @app.post("/inventory/{site}/{sku}/book-quantity", operation_id="erp_adjust_book_quantity",
              response_model=InventoryAdjustment, status_code=201,
              summary="Set the book quantity of a SKU at a site (e.g. to the counted quantity) and post the "
              "value change to the ledger. Irreversible: it is an inventory write-off or write-on.",
              responses={404: {"description": "Not on the books"}, 409: {"description": "No change"}},
              openapi_extra={"x-opsagent-reversible": False})
    def adjust_book_quantity(site: Site, sku: Sku, body: BookQuantityIn,
                             options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _inventory(conn, site, sku)
            if body.book_quantity == before.book_quantity:
                raise conflict(f"{sku} at {site} is already booked at {before.book_quantity}")
            adjustment = InventoryAdjustment(
                adjustment_id=next_id(conn, "inventory_adjustments", "IA"), site=site, sku=sku,
                old_quantity=before.book_quantity, new_quantity=body.book_quantity, reason=body.reason,
                value_change=round((body.book_quantity - before.book_quantity) * before.unit_cost, 2),
                created_at=utc_now())
            insert(conn, "inventory_adjustments", adjustment.model_dump())
            conn.execute("UPDATE inventory SET book_quantity = ?, updated_at = ? WHERE site = ? AND sku = ?",
                         (body.book_quantity, adjustment.created_at, site, sku))
            data = adjustment.model_dump(mode="json")
            after = {"inventory": _inventory(conn, site, sku).model_dump(mode="json"), "adjustment": data}
            return Change(body=data, before={"inventory": before.model_dump(mode="json"), "adjustment": None},
                          after=after, status_code=201)

        return perform_write(db, operation="erp_adjust_book_quantity", options=options, apply=apply,
                             request={"site": site, "sku": sku, **body.model_dump()})

    add_admin_upsert(app, db, "customers", Customer, key="customer_id")
    add_admin_upsert(app, db, "invoices", InvoiceRecord, key="invoice_id")
    add_admin_upsert(app, db, "inventory", InventoryRecord, key="site, sku")
    app.include_router(admin_router(db))
    return app
