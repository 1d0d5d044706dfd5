"""Varied wording: the same instances, described the way real tickets arrive.

`vary(instances)` rewrites each instance's description (and the ticket planted for it) in one of
`KINDS`, from a random stream seeded by the instance id alone, so the template generators' own
streams are never touched: the template set stays byte-identical, and the gold, the entities and
every other planted record are unchanged. Within a class, the kinds go round by instance index, so
every kind occurs in a set of six or more per class (a kind that cannot apply, e.g. a wrong figure
in a description without figures, gives way to forwarded mail, German, Spanish or shorthand).

- `shorthand`: abbreviations, lower case, dropped articles;
- `forwarded`: the report inside a forwarded mail (header, greeting, signature, disclaimer, quote);
- `german` / `spanish`: the report written in that language (German with decimal commas);
- `wrong_figure`: one figure (weight, amount, quantity, date) is wrong: the systems of record say
  otherwise;
- `missing_figure`: the figures are left out.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections import defaultdict
from datetime import date, timedelta
from typing import Any, Literal

from opsagent.errors import InputError
from opsagent.evals.catalogue._model import Instance

Wording = Literal["template", "varied"]
WORDINGS: tuple[str, ...] = ("template", "varied")
KINDS: tuple[str, ...] = ("shorthand", "forwarded", "german", "spanish", "wrong_figure", "missing_figure")

_UNIT = r"(?:kg|EUR|EA|BOX|ROLL|PCS|units)"
_FIGURE = re.compile(  # weights, amounts, quantities, dates; never a digit inside an id
    r"(?<![\w.-])(?:\d{4}-\d{2}-\d{2}(?![\w-])|\d+(?:\.\d+)?(?=\s?" + _UNIT + r"\b))"
    r"|(?:(?<=WMS )|(?<=ERP )|(?<==)|(?<== ))\d+(?:\.\d+)?(?![\w-])")

_SHORT = {
    "shipment": "shpt", "shipments": "shpts", "invoice": "inv", "invoices": "invs", "customer": "cust",
    "please": "pls", "pickup": "PU", "order": "ord", "because": "bc", "with": "w/", "without": "w/o",
    "warehouse": "WH", "tracking": "trk", "carrier": "carr", "quantity": "qty", "amount": "amt",
    "delivered": "dlvd", "cancelled": "canc.", "documents": "docs", "number": "no.", "received": "rcvd",
    "mismatch": "mism.", "difference": "diff", "address": "addr", "customs": "cstms", "label": "lbl",
    "parcel": "pcl", "weight": "wt", "status": "stat.", "thanks": "thx", "thanks!": "thx",
    "something": "sth", "someone": "s/o", "reschedule": "resched.", "information": "info", "and": "&",
}
_FALLBACK = ("forwarded", "german", "spanish", "shorthand")  # for a kind that cannot apply
_DROP = {"the", "a", "an", "is", "was", "are", "it", "that"}

_GERMAN = {
    "weight_mismatch": "Gewichtsabweichung bei Sendung {shipment_id}: der Spediteur berechnet "
                       "{billed_weight_kg} kg, unser Scan ergab {scanned_weight_kg} kg. Bitte prüfen.",
    "address_rejected": "Die Adresse zu Sendung {shipment_id} (Kunde {customer_id}) wurde vom Spediteur "
                        "abgelehnt, das Paket liegt im Depot. Bitte klären.",
    "tracking_out_of_sync": "Status von Sendung {shipment_id} passt nicht: beim Spediteur "
                            "'{carrier_status}', bei uns im WMS '{wms_status}'. Bitte abgleichen.",
    "tracking_stuck": "Sendung {shipment_id} hat seit Tagen kein Tracking-Update mehr. Können wir beim "
                      "Spediteur nachhaken?",
    "stock_count_mismatch": "Bestandsdifferenz {sku} auf Lagerplatz {location_id} ({site}): WMS "
                            "{wms_quantity}, ERP {book_quantity}. Welcher Wert stimmt?",
    "duplicate_invoice": "Doppelte Rechnung? {invoice_id} scheint eine Kopie von {original} zu sein "
                         "({amount} EUR, gleiche Sendung {shipment_id}).",
    "damage_claim": "Kunde hat Sendung {shipment_id} beschädigt erhalten und bittet um eine Gutschrift "
                    "von {claim} EUR auf Rechnung {invoice_id}.",
    "missed_pickup": "Abholung {pickup_id} wurde verpasst, es kam niemand. Bitte neu einplanen.",
    "label_cancelled_order": "Auftrag {order_id} ist storniert, aber für Sendung {shipment_id} gibt es noch "
                             "ein Label. Bitte stoppen.",
    "customs_documents_missing": "Der Zoll hält Sendung {shipment_id} (Auftrag {order_id}) fest, die "
                                 "Handelsrechnung fehlt.",
}
_SPANISH = {
    "weight_mismatch": "Diferencia de peso en el envío {shipment_id}: el transportista factura "
                       "{billed_weight_kg} kg, nuestro escaneo dio {scanned_weight_kg} kg. Favor de revisar.",
    "address_rejected": "El transportista rechazó la dirección del envío {shipment_id} (cliente "
                        "{customer_id}); el paquete está en el depósito.",
    "tracking_out_of_sync": "El estado del envío {shipment_id} no coincide: transportista "
                            "'{carrier_status}', WMS '{wms_status}'. Por favor sincronizar.",
    "tracking_stuck": "El envío {shipment_id} lleva días sin actualización de seguimiento. ¿Podemos "
                      "reclamar al transportista?",
    "stock_count_mismatch": "Diferencia de inventario {sku} en la ubicación {location_id} ({site}): WMS "
                            "{wms_quantity}, ERP {book_quantity}. ¿Cuál es correcto?",
    "duplicate_invoice": "¿Factura duplicada? {invoice_id} parece una copia de {original} ({amount} EUR, "
                         "mismo envío {shipment_id}).",
    "damage_claim": "El cliente recibió el envío {shipment_id} dañado y pide un abono de {claim} EUR en la "
                    "factura {invoice_id}.",
    "missed_pickup": "La recogida {pickup_id} no se realizó, no vino nadie. Por favor reprogramar.",
    "label_cancelled_order": "El pedido {order_id} está cancelado pero el envío {shipment_id} todavía tiene "
                             "etiqueta. Por favor anularla.",
    "customs_documents_missing": "Aduana retiene el envío {shipment_id} (pedido {order_id}); falta la "
                                 "factura comercial.",
}
_GENERIC = {"german": "Ausnahme {exception_type}, bitte prüfen: {ids}.",
            "spanish": "Excepción {exception_type}, por favor revisar: {ids}."}
_SENDERS = [("Marta Kowalski", "Customer Service"), ("Jonas Becker", "Accounts Receivable"),
            ("Lucía Fernández", "Inventory Control"), ("Ayşe Demir", "Dispatch"),
            ("Pieter de Vries", "Key Account Management")]
_DISCLAIMER = ("This e-mail and any attachments are confidential and intended solely for the addressee. "
               "If you have received it in error, please notify the sender and delete it.")


def vary(instances: list[Instance], wording: str = "varied") -> list[Instance]:
    """The instances with their descriptions re-worded (`template`: unchanged)."""
    if wording not in WORDINGS:
        raise InputError(f"unknown wording {wording!r}; choose one of {', '.join(WORDINGS)}")
    if wording == "template":
        return list(instances)
    seen: dict[str, int] = defaultdict(int)
    out = []
    for inst in instances:
        out.append(reword(inst, seen[inst.exception_type]))
        seen[inst.exception_type] += 1
    return out


def kind_of(inst: Instance) -> str | None:
    """The wording kind an instance was varied with (None for a template instance)."""
    return inst.facts.get("wording")


def reword(inst: Instance, position: int) -> Instance:
    """One instance in the kind its `position` within its class picks (or the next that applies)."""
    rng = random.Random(f"wording:{inst.instance_id}")
    turn = position % len(_FALLBACK)
    for kind in (KINDS[position % len(KINDS)], *_FALLBACK[turn:], *_FALLBACK[:turn]):
        text = _WRITERS[kind](rng, inst)
        if text is not None and text != inst.description:
            break
    else:  # pragma: no cover - forwarded and the languages always apply
        raise AssertionError(f"no wording kind applies to {inst.instance_id}")
    setup = []
    for write in inst.setup:
        if write.system == "tkt" and write.route == "tickets":
            rows = [{**r, "description": text, "subject": _subject(text)}
                    if r.get("description") == inst.description else r for r in write.records]
            write = write.model_copy(update={"records": rows})
        setup.append(write)
    return inst.model_copy(update={"description": text, "setup": setup,
                                   "facts": {**inst.facts, "wording": kind}})


def _subject(text: str) -> str:
    return text.split(". ")[0].split("\n")[0][:80]


def _shorthand(rng: random.Random, inst: Instance) -> str:
    words = []
    for word in inst.description.split(" "):
        bare = word.rstrip(",.:;!?")
        key, tail = bare.lower(), word[len(bare):]
        if any(c.isdigit() for c in word) or word.isupper():
            words.append(word)  # ids, figures and acronyms stay as they are
        elif key in _DROP and rng.random() < 0.8:
            continue
        elif key in _SHORT:
            words.append(_SHORT[key] + tail)
        else:
            words.append(word.lower())
    return " ".join(words).replace(" - ", " / ").rstrip(". ")


def _forwarded(rng: random.Random, inst: Instance) -> str:
    name, dept = rng.choice(_SENDERS)
    first = name.split()[0]
    handle = unicodedata.normalize("NFKD", name.lower().replace(" ", ".")).encode("ascii", "ignore").decode()
    day = date(2025, 9, 1) + timedelta(days=rng.randint(0, 80))
    prefix = rng.choice(["FW: ", "Fwd: ", "WG: ", "FW: RE: "])
    quote = rng.choice(["> Thanks, we will look into it.", "> Can you send the details?",
                        "> Ticket created, see below."])
    return (f"---------- Forwarded message ---------\nFrom: {name} <{handle}@example-shipper.com>\n"
            f"Date: {day:%a, %d %b %Y} {rng.randint(7, 18):02d}:{rng.randint(0, 59):02d}\n"
            f"Subject: {prefix}{_subject(inst.description)}\nTo: ops-exceptions@example-shipper.com\n\n"
            f"{rng.choice(['Hi team,', 'Hello,', 'Hi all,', 'Dear colleagues,'])}\n\n{inst.description}\n\n"
            f"{rng.choice(['Best regards', 'Kind regards', 'BR', 'Cheers'])},\n{first}\n{name} | {dept}\n"
            f"Tel. +49 211 {rng.randint(100000, 999999)}\n\n{_DISCLAIMER}\n\n"
            f"On {day - timedelta(days=1):%a, %d %b %Y} ops wrote:\n{quote}")


def _language(kind: str):
    templates = _GERMAN if kind == "german" else _SPANISH

    def write(rng: random.Random, inst: Instance) -> str:
        fields: dict[str, Any] = {k: _number(v, kind) for k, v in inst.facts.items()
                                  if isinstance(v, int | float | str) and not isinstance(v, bool)}
        fields.update(inst.entities, exception_type=inst.exception_type)
        try:
            return templates[inst.exception_type].format_map(fields)
        except KeyError:  # a class without a template here, or a field it lacks
            ids = ", ".join(f"{k} {v}" for k, v in inst.entities.items())
            return _GENERIC[kind].format(exception_type=inst.exception_type, ids=ids)
    return write


def _number(value: Any, kind: str) -> Any:
    if kind == "german" and isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".").replace(".", ",") if value % 1 else f"{value:.0f}"
    return value


def _wrong_figure(rng: random.Random, inst: Instance) -> str | None:
    found = list(_FIGURE.finditer(inst.description))
    if not found:
        return None
    m = rng.choice(found)
    return inst.description[:m.start()] + _wrong(rng, m.group(0)) + inst.description[m.end():]


def _wrong(rng: random.Random, figure: str) -> str:
    if "-" in figure:
        shifted = date.fromisoformat(figure) + timedelta(days=rng.choice([-3, -2, -1, 1, 2, 3]))
        return shifted.isoformat()
    if "." in figure:
        decimals = len(figure.split(".")[1])
        factor = rng.choice([rng.uniform(0.55, 0.85), rng.uniform(1.15, 1.6)])
        return f"{float(figure) * factor:.{decimals}f}"
    value = int(figure)
    return str(max(0, value + rng.choice([-1, 1]) * rng.randint(1, max(2, value // 3))))


def _missing_figure(rng: random.Random, inst: Instance) -> str | None:
    if not _FIGURE.search(inst.description):
        return None
    gap = rng.choice(["??", "xx", "(tbc)"])
    return _FIGURE.sub(lambda m: "(date?)" if "-" in m.group(0) else gap, inst.description)


_WRITERS = {"shorthand": _shorthand, "forwarded": _forwarded, "german": _language("german"),
            "spanish": _language("spanish"), "wrong_figure": _wrong_figure, "missing_figure": _missing_figure}
