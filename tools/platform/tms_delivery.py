"""The TMS's delivery side: consignee addresses (and carrier rejections), customs holds and documents."""

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
from opsagent.tools.platform.tms_tracking import add_event, shipment_row

SCHEMA = """
CREATE TABLE IF NOT EXISTS addresses (
    shipment_id TEXT PRIMARY KEY REFERENCES shipments(shipment_id), name TEXT NOT NULL,
    street TEXT NOT NULL, postcode TEXT NOT NULL, city TEXT NOT NULL, country TEXT NOT NULL,
    validation TEXT NOT NULL, rejection_reason TEXT, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS address_changes (
    change_id TEXT PRIMARY KEY, shipment_id TEXT NOT NULL REFERENCES shipments(shipment_id),
    old_address TEXT NOT NULL, new_address TEXT NOT NULL, reason TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS customs (
    shipment_id TEXT PRIMARY KEY REFERENCES shipments(shipment_id), destination_country TEXT NOT NULL,
    status TEXT NOT NULL, missing_documents TEXT NOT NULL, hold_reason TEXT, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS customs_documents (
    document_id TEXT PRIMARY KEY, shipment_id TEXT NOT NULL REFERENCES shipments(shipment_id),
    document_type TEXT NOT NULL, reference TEXT NOT NULL, created_at TEXT NOT NULL
);
"""
VOLATILE = {
    "address_changes": {"change_id", "reason"},
    "customs_documents": {"document_id"},
}

ShipmentId = Annotated[str, PathParam(description="Shipment id, e.g. SHP-104233.")]
DocumentType = Literal["commercial_invoice", "packing_list", "certificate_of_origin"]
_CLOSED = {"delivered", "invoiced", "lost", "label_voided"}


class AddressFields(BaseModel):
    street: str = Field(min_length=1, max_length=120, description="Street and house number.")
    postcode: str = Field(min_length=2, max_length=12)
    city: str = Field(min_length=1, max_length=80)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 country code, e.g. DE.")


class AddressRecord(AddressFields):
    """The consignee address of a shipment (admin seeding input)."""

    shipment_id: str
    name: str
    validation: Literal["valid", "rejected"] = "valid"
    rejection_reason: str | None = None
    updated_at: str


class Address(AddressRecord):
    validation: Literal["valid", "rejected"] = Field(
        description="'rejected' when the carrier could not deliver to this address.")
    rejection_reason: str | None = Field(description="The carrier's reason, if rejected.")


class AddressUpdateIn(AddressFields):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500, description="Why, e.g. the address of record.")


class CustomsRecord(BaseModel):
    """A customs hold of an international shipment (admin seeding input)."""

    shipment_id: str
    destination_country: str
    status: Literal["held", "documents_submitted", "cleared"]
    missing_documents: str = Field("", description="Comma-separated document types customs asks for.")
    hold_reason: str | None = None
    updated_at: str


class CustomsDocument(BaseModel):
    document_id: str
    shipment_id: str
    document_type: DocumentType
    reference: str
    created_at: str


class Customs(BaseModel):
    shipment_id: str
    destination_country: str
    customs_status: Literal["held", "documents_submitted", "cleared"]
    missing_documents: list[DocumentType] = Field(description="What customs still needs.")
    hold_reason: str | None
    documents: list[CustomsDocument]


class CustomsDocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    document_type: DocumentType = Field(description="Which document customs asked for.")
    reference: str = Field(min_length=1, max_length=64,
                           description="The document's id in its system, e.g. the ERP invoice id.")


def _address(conn: sqlite3.Connection, shipment_id: str) -> Address:
    found = row_or_404(conn, "Delivery address of shipment", shipment_id,
                       "SELECT * FROM addresses WHERE shipment_id = ?", shipment_id)
    return Address(**found)


def _customs(conn: sqlite3.Connection, shipment_id: str) -> Customs:
    found = row_or_404(conn, "Customs record of shipment", shipment_id,
                       "SELECT * FROM customs WHERE shipment_id = ?", shipment_id)
    docs = [CustomsDocument(**r) for r in conn.execute(
        "SELECT * FROM customs_documents WHERE shipment_id = ? ORDER BY created_at, document_id",
        (shipment_id,))]
    return Customs(shipment_id=shipment_id, destination_country=found["destination_country"],
                   customs_status=found["status"], hold_reason=found["hold_reason"], documents=docs,
                   missing_documents=[d for d in found["missing_documents"].split(",") if d])


def add_routes(app: FastAPI, db: Database) -> None:
    """Address and customs endpoints, and their admin seeding routes."""
    missing = {404: {"description": "Unknown shipment, or no such record for it"}}

    @app.get("/shipments/{shipment_id}/address", operation_id="tms_get_delivery_address",
             response_model=Address, responses=missing,
             summary="Get the consignee address the carrier delivers to, and whether the carrier "
             "rejected it.")
    def get_address(shipment_id: ShipmentId) -> Address:
        with db.read() as conn:
            return _address(conn, shipment_id)

    @app.post("/shipments/{shipment_id}/address", operation_id="tms_update_delivery_address",
              response_model=Address,
              responses={**missing, 409: {"description": "Closed shipment or no change"}},
              summary="Correct the consignee address of an undelivered shipment; a rejected parcel goes "
              "back in transit for another delivery attempt.",
              openapi_extra={"x-opsagent-reversible": True,
                             "x-opsagent-inverse": "tms_update_delivery_address"})
    def update_address(shipment_id: ShipmentId, body: AddressUpdateIn,
                       options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            ship = shipment_row(conn, shipment_id)
            before = _address(conn, shipment_id)
            if ship["status"] in _CLOSED:
                raise conflict(f"Shipment {shipment_id!r} is {ship['status']}; its address cannot change")
            new = AddressFields(**body.model_dump(exclude={"reason"}))
            old = AddressFields(**before.model_dump())
            if new == old:
                raise conflict(f"Shipment {shipment_id!r} already has this address ({before.validation}); "
                               "a rejected address must be corrected, not resubmitted")
            now = utc_now()
            insert(conn, "address_changes", {
                "change_id": next_id(conn, "address_changes", "AC"), "shipment_id": shipment_id,
                "old_address": old.model_dump_json(), "new_address": new.model_dump_json(),
                "reason": body.reason, "created_at": now})
            conn.execute("UPDATE addresses SET street = ?, postcode = ?, city = ?, country = ?, "
                         "validation = 'valid', rejection_reason = NULL, updated_at = ? "
                         "WHERE shipment_id = ?",
                         (new.street, new.postcode, new.city, new.country, now, shipment_id))
            if ship["status"] == "exception":
                conn.execute("UPDATE shipments SET status = 'in_transit' WHERE shipment_id = ?",
                             (shipment_id,))
                add_event(conn, shipment_id, "ADDRESS_CORRECTED", new.city, "new delivery attempt")
            after = _address(conn, shipment_id).model_dump(mode="json")
            return Change(body=after, before=before.model_dump(mode="json"), after=after)

        return perform_write(db, operation="tms_update_delivery_address", options=options, apply=apply,
                             request={"shipment_id": shipment_id, **body.model_dump()})

    @app.get("/shipments/{shipment_id}/customs", operation_id="tms_get_customs", response_model=Customs,
             summary="Get the customs status of an international shipment: held or not, which documents "
             "customs still needs, and the documents submitted.", responses=missing)
    def get_customs(shipment_id: ShipmentId) -> Customs:
        with db.read() as conn:
            return _customs(conn, shipment_id)

    @app.post("/shipments/{shipment_id}/customs/documents", operation_id="tms_attach_customs_document",
              response_model=Customs, status_code=201,
              summary="Submit a document customs asked for (e.g. the commercial invoice from the ERP). "
              "Irreversible: it goes to the customs authority.",
              responses={**missing, 409: {"description": "Customs did not ask for this document"}},
              openapi_extra={"x-opsagent-reversible": False})
    def attach_document(shipment_id: ShipmentId, body: CustomsDocumentIn,
                        options: Annotated[WriteOptions, Depends(write_options)]):
        def apply(conn: sqlite3.Connection) -> Change:
            before = _customs(conn, shipment_id)
            if body.document_type not in before.missing_documents:
                raise conflict(f"Customs did not ask for a {body.document_type} for shipment {shipment_id!r} "
                               f"(missing: {', '.join(before.missing_documents) or 'nothing'})")
            now = utc_now()
            insert(conn, "customs_documents", {
                "document_id": next_id(conn, "customs_documents", "CD"), "shipment_id": shipment_id,
                "document_type": body.document_type, "reference": body.reference, "created_at": now})
            rest = [d for d in before.missing_documents if d != body.document_type]
            conn.execute("UPDATE customs SET missing_documents = ?, status = ?, updated_at = ? "
                         "WHERE shipment_id = ?",
                         (",".join(rest), "held" if rest else "documents_submitted", now, shipment_id))
            after = _customs(conn, shipment_id).model_dump(mode="json")
            return Change(body=after, before=before.model_dump(mode="json"), after=after, status_code=201)

        return perform_write(db, operation="tms_attach_customs_document", options=options, apply=apply,
                             request={"shipment_id": shipment_id, **body.model_dump()})

    add_admin_upsert(app, db, "addresses", AddressRecord, key="shipment_id")
    add_admin_upsert(app, db, "customs", CustomsRecord, key="shipment_id")
