"""Seeded data for the sandbox: ordinary background shipments and planted weight mismatches.

Data is planted through the services' hidden admin routes as `AdminWrite`s (system, route,
records), so a planted scenario is plain data that can be stored and replayed; the other
exception classes of the catalogue live in `opsagent.evals.catalogue` and use the same helpers.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, Field

from opsagent.errors import InputError

# (scale_id, site, model, last check result); the failed ones make a scan non-authoritative.
SCALES = [
    ("SCL-DUS-01", "DUS", "Mettler PBA655", "passed"), ("SCL-DUS-02", "DUS", "Mettler PBA655", "passed"),
    ("SCL-DUS-03", "DUS", "Bizerba ST", "failed"), ("SCL-HAM-01", "HAM", "Sartorius Combics", "passed"),
    ("SCL-HAM-02", "HAM", "Sartorius Combics", "failed"), ("SCL-LEJ-01", "LEJ", "Mettler PBA655", "passed"),
]
# (carrier, service level, base charge EUR, rate per kg EUR, tracking number pattern: D digit, A alnum)
TARIFFS = [
    ("DHL", "Paket", 4.90, 0.45, "00340434DDDDDDDDDDDD"), ("DHL", "Express", 12.50, 1.80, "DDDDDDDDDD"),
    ("UPS", "Standard", 6.20, 0.62, "1ZAAAAAA68DDDDDDDD"),
    ("UPS", "Express Saver", 14.00, 2.10, "1ZAAAAAA65DDDDDDDD"),
    ("DPD", "Classic", 4.20, 0.40, "0DDDDDDDDDDDDD"), ("GLS", "Business Parcel", 4.10, 0.38, "DDDDDDDDDDD"),
    ("FedEx", "International Economy", 18.00, 2.60, "DDDDDDDDDDDD"),
]
# (city, postcode prefix, country, streets) of consignees; postcodes are the prefix plus digits.
CITIES = [
    ("Düsseldorf", "40", "DE", ["Königsallee", "Kaiserswerther Straße", "Erkrather Straße"]),
    ("Hamburg", "20", "DE", ["Am Sandtorkai", "Spaldingstraße", "Wendenstraße"]),
    ("Leipzig", "04", "DE", ["Karl-Liebknecht-Straße", "Prager Straße", "Torgauer Straße"]),
    ("Köln", "50", "DE", ["Hohenzollernring", "Mathias-Brüggen-Straße", "Widdersdorfer Straße"]),
    ("München", "80", "DE", ["Landsberger Straße", "Leopoldstraße", "Frankfurter Ring"]),
    ("Berlin", "10", "DE", ["Friedrichstraße", "Storkower Straße", "Holzmarktstraße"]),
    ("Stuttgart", "70", "DE", ["Heilbronner Straße", "Pragstraße", "Nordbahnhofstraße"]),
    ("Frankfurt am Main", "60", "DE",
     ["Hanauer Landstraße", "Mainzer Landstraße", "Eschborner Landstraße"]),
]
_NAMES = ["Becker", "Schulz", "Hoffmann", "Wagner", "Krüger", "Neumann", "Schmitt", "Vogel", "Fischer",
          "Lange", "Brandt", "Keller", "Roth", "Zimmermann", "Hartmann", "Busch"]
_FORMS = ["GmbH", "KG", "AG", "Handels GmbH", "Logistik GmbH", "e.K.", "GmbH & Co. KG"]
_EPOCH = datetime(2025, 10, 1, 6, 0, tzinfo=UTC)


class HasBaseUrls(Protocol):
    base_urls: dict[str, str]


class AdminWrite(BaseModel):
    """Records to upsert through one hidden admin route: POST <system>/_admin/<route>."""

    system: str
    route: str
    records: list[dict[str, Any]]


def upload(target: HasBaseUrls | dict[str, str], writes: list[AdminWrite]) -> None:
    """Plant the records, in order (parents before the rows that reference them)."""
    urls = target if isinstance(target, dict) else target.base_urls
    with httpx.Client(timeout=30.0) as client:
        for w in writes:
            if w.system not in urls:
                raise InputError(f"no base URL for system {w.system!r} (have: {', '.join(urls)})")
            client.post(f"{urls[w.system]}/_admin/{w.route}", json=w.records).raise_for_status()


def at(rng: random.Random, days: float = 45) -> datetime:
    """A time within `days` after the sandbox epoch (2025-10-01), to the minute."""
    return _EPOCH + timedelta(minutes=rng.randint(0, int(60 * 24 * days)))


def company(rng: random.Random, customer_id: str, *, verified: bool = True) -> dict[str, Any]:
    """An ERP customer record with a German address of record."""
    city, prefix, country, streets = rng.choice(CITIES)
    name = f"{rng.choice(_NAMES)} {rng.choice(_FORMS)}"
    domain = name.split()[0].lower().replace("ü", "ue").replace("ö", "oe")
    return {"customer_id": customer_id, "name": name, "email": f"ap@{domain}-{customer_id[-3:]}.de",
            "street": f"{rng.choice(streets)} {rng.randint(1, 180)}",
            "postcode": f"{prefix}{rng.randint(100, 999)}", "city": city, "country": country,
            "address_status": "verified" if verified else "unverified",
            "updated_at": (_EPOCH - timedelta(days=rng.randint(20, 400))).isoformat()}


class InjectedException(BaseModel):
    """One planted back-office exception and what a correct agent does with it."""

    exception_type: Literal["weight_mismatch"] = "weight_mismatch"
    description: str = Field(description="Free text as ops would write it.")
    entities: dict[str, str] = Field(description='The entities involved, e.g. {"shipment_id": "SHP-104233"}.')
    expected_status: Literal["resolved", "escalated"]
    gold_tools: list[str] = Field(description="The tools a correct resolution calls, in order.")
    gold_args: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Expected arguments of the gold write tools, by tool name."
    )
    facts: dict[str, Any] = Field(default_factory=dict, description="The planted ground truth.")


def _urls(target: HasBaseUrls | dict[str, str]) -> dict[str, str]:
    urls = target if isinstance(target, dict) else target.base_urls
    if not {"wms", "tms"} <= set(urls):
        raise InputError("need base URLs for both 'wms' and 'tms'")
    return urls


def _tracking(rng: random.Random, pattern: str) -> str:
    alnum = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    return "".join(rng.choice("0123456789") if c == "D" else rng.choice(alnum) if c == "A" else c
                   for c in pattern)


# The WMS dispatch status that goes with a carrier status.
_DISPATCH = {"delivered": "delivered", "invoiced": "delivered", "label_created": "packed"}


def _parcel(rng: random.Random, shipment_id: str, scale: tuple, status: str) -> tuple[dict, dict]:
    """A consistent WMS record and TMS record (billed = declared = scanned weight)."""
    length, width, height = rng.randint(15, 60), rng.randint(10, 40), rng.randint(5, 30)
    volumetric = length * width * height / 5000
    weight = round(max(1.0, volumetric * rng.uniform(1.2, 2.5)), 1)  # dense goods: actual > volumetric
    scanned_at = _EPOCH + timedelta(minutes=rng.randint(0, 60 * 24 * 45))
    carrier, service, base, rate, pattern = rng.choice(TARIFFS)
    wms = {"shipment_id": shipment_id, "order_id": f"SO-{rng.randint(1_000_000, 9_999_999)}",
           "customer_id": f"CUST-{rng.randint(10_000, 99_999)}", "site": scale[1],
           "scanned_weight_kg": weight, "length_cm": length, "width_cm": width, "height_cm": height,
           "scanned_at": scanned_at.isoformat(), "scale_id": scale[0],
           "dispatch_status": _DISPATCH.get(status, "shipped")}
    tms = {"shipment_id": shipment_id, "carrier": carrier, "service_level": service,
           "tracking_number": _tracking(rng, pattern), "status": status, "declared_weight_kg": weight,
           "billed_weight_kg": weight, "base_charge": base, "rate_per_kg": rate, "currency": "EUR",
           "open_dispute_id": None, "order_id": wms["order_id"]}
    return wms, tms


def parcel(rng: random.Random, shipment_id: str, *, status: str,
           site: str | None = None) -> tuple[dict, dict]:
    """A consistent WMS and TMS record of one parcel, weighed on a scale that passed its check."""
    scales = [s for s in SCALES if s[3] == "passed" and site in (None, s[1])]
    return _parcel(rng, shipment_id, rng.choice(scales), status)


def scales_write() -> AdminWrite:
    """The floor scales every WMS shipment refers to."""
    return AdminWrite(system="wms", route="scales", records=[
        {"scale_id": s, "site": site, "model": model, "last_check_at": "2025-09-29T07:00:00+00:00",
         "last_check_result": result} for s, site, model, result in SCALES])


def _ids(rng: random.Random, count: int, low: int, high: int) -> list[str]:
    return [f"SHP-{n}" for n in rng.sample(range(low, high), count)]


def _parcel_writes(wms: list[dict], tms: list[dict]) -> list[AdminWrite]:
    return [scales_write(), AdminWrite(system="wms", route="shipments", records=wms),
            AdminWrite(system="tms", route="shipments", records=tms)]


def seed_background(target: HasBaseUrls | dict[str, str], *, count: int, seed: int) -> list[str]:
    """Write `count` ordinary shipments (billed weight = scanned weight) into the WMS and TMS and,
    when the platform has an ERP, their customers and paid goods invoices."""
    rng = random.Random(f"background:{seed}")
    wms, tms = [], []
    for sid in _ids(rng, count, 100_000, 200_000):
        pair = _parcel(rng, sid, rng.choice(SCALES), rng.choice(["delivered", "in_transit", "invoiced"]))
        wms.append(pair[0])
        tms.append(pair[1])
    urls = _urls(target)
    writes = _parcel_writes(wms, tms)
    if "erp" in urls:
        erp = random.Random(f"background-erp:{seed}")
        customers = {w["customer_id"]: company(erp, w["customer_id"]) for w in wms}
        invoices = [{"invoice_id": f"INV-{erp.randint(10_000_000, 19_999_999)}",
                     "customer_id": w["customer_id"], "order_id": w["order_id"],
                     "shipment_id": w["shipment_id"], "kind": "goods",
                     "amount": round(erp.uniform(40, 900), 2), "currency": "EUR", "status": "paid",
                     "issued_at": w["scanned_at"], "paid_at": w["scanned_at"]} for w in wms]
        writes += [AdminWrite(system="erp", route="customers", records=list(customers.values())),
                   AdminWrite(system="erp", route="invoices", records=invoices)]
    upload(urls, writes)
    return [w["shipment_id"] for w in wms]


def weight_mismatch_records(*, count: int, seed: int, suspect_share: float = 0.3
                            ) -> tuple[list[AdminWrite], list[InjectedException]]:
    """The records and instances `inject_weight_mismatch` plants, without planting them."""
    if count < 0 or not 0.0 <= suspect_share <= 1.0:
        raise InputError("count must be >= 0 and suspect_share within [0, 1]")
    rng = random.Random(f"weight_mismatch:{seed}")
    suspects = set(rng.sample(range(count), round(count * suspect_share)))
    passed = [s for s in SCALES if s[3] == "passed"]
    failed = [s for s in SCALES if s[3] == "failed"]
    wms, tms, out = [], [], []
    for i, sid in enumerate(_ids(rng, count, 200_000, 1_000_000)):
        scale = rng.choice(failed if i in suspects else passed)
        w, t = _parcel(rng, sid, scale, rng.choice(["delivered", "invoiced"]))
        billed = round(w["scanned_weight_kg"] * rng.uniform(1.15, 1.80), 1)
        t["billed_weight_kg"] = max(billed, round(w["scanned_weight_kg"] + 0.1, 1))
        wms.append(w)
        tms.append(t)
        out.append(_exception(rng, w, t, scale_ok=i not in suspects))
    return _parcel_writes(wms, tms), out


def inject_weight_mismatch(target: HasBaseUrls | dict[str, str], *, count: int, seed: int,
                           suspect_share: float = 0.3) -> list[InjectedException]:
    """Plant `count` shipments whose carrier billed weight is 15-80% above the warehouse scan;
    `round(count * suspect_share)` of them were weighed on a scale that failed its last check."""
    writes, out = weight_mismatch_records(count=count, seed=seed, suspect_share=suspect_share)
    upload(_urls(target), writes)
    return out


def _exception(rng: random.Random, wms: dict, tms: dict, *, scale_ok: bool) -> InjectedException:
    sid = wms["shipment_id"]
    reads = ["wms_get_shipment", "tms_get_shipment"]
    dispute = {"shipment_id": sid, "claimed_weight_kg": wms["scanned_weight_kg"]}
    return InjectedException(
        description=_description(rng, wms, tms),
        entities={"shipment_id": sid},
        expected_status="resolved" if scale_ok else "escalated",
        gold_tools=[*reads, "tms_open_weight_dispute"] if scale_ok else reads,
        gold_args={"tms_open_weight_dispute": dispute} if scale_ok else {},
        facts={"scanned_weight_kg": wms["scanned_weight_kg"], "billed_weight_kg": tms["billed_weight_kg"],
               "scale_id": wms["scale_id"], "scale_check": "passed" if scale_ok else "failed",
               "carrier": tms["carrier"]},
    )


_TEMPLATES = [
    "{carrier} invoice {invoice} bills {sid} at {billed} kg but we shipped it at {scanned} kg. {filler}",
    "Weight mismatch on {sid} ({carrier} {service}). Billed {billed}kg vs our scan {scanned}kg, "
    "that's {amount} EUR on the invoice. {filler}",
    "Hi team, customer {customer} complained about shipping charges for order {order}. Shipment {sid} "
    "was billed by {carrier} for {billed} kg. Can someone check against the warehouse scan? {filler}",
    "{sid} - carrier weight looks off. {carrier} says {billed} kg. {filler}",
    "Please look at {sid}: billed weight {billed} kg on {carrier} invoice {invoice}, declared was "
    "{scanned} kg. {filler} Thanks",
    "Overcharge?? {carrier} billed {billed} kg for {sid} out of {site}. Our number is lower. {filler}",
    "Finance flagged {sid} in the {carrier} invoice run ({invoice}): billed {billed} kg / {amount} EUR. "
    "Declared weight {scanned} kg. {filler}",
    "recon exception: shipment {sid}, order {order}, carrier {carrier}, billed_weight={billed}, "
    "declared={scanned}. {filler}",
]
_FILLERS = [
    "", "", "Customer is one of our top accounts, pls prioritise.", "FYI the pickup on Tuesday was late too.",
    "Marta is out this week so sending it to the queue.",
    "Not urgent but finance closes the month on Friday.",
    "Same thing happened last month with another parcel.", "Copied from the customer service inbox.",
    "Parcel went out with the afternoon wave.", "Can we get this sorted before the carrier review call?",
]


def _description(rng: random.Random, wms: dict, tms: dict) -> str:
    billed = tms["billed_weight_kg"]
    text = rng.choice(_TEMPLATES).format(
        sid=wms["shipment_id"], carrier=tms["carrier"], service=tms["service_level"], billed=billed,
        scanned=wms["scanned_weight_kg"], amount=f"{tms['base_charge'] + tms['rate_per_kg'] * billed:.2f}",
        invoice=f"INV-{rng.randint(2025000, 2025999)}", order=wms["order_id"], customer=wms["customer_id"],
        site=wms["site"], filler=rng.choice(_FILLERS),
    )
    return typo(rng, " ".join(text.split()))


def typo(rng: random.Random, text: str, chance: float = 0.35) -> str:
    """Now and then swap two letters of one lower-case word (never inside an id or a number)."""
    if rng.random() < chance:
        words = text.split(" ")
        candidates = [i for i, w in enumerate(words) if w.isalpha() and w.islower() and len(w) >= 5]
        if candidates:
            i = rng.choice(candidates)
            j = rng.randint(1, len(words[i]) - 3)
            w = words[i]
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
            text = " ".join(words)
    return text
