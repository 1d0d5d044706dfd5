"""The exception catalogue: classes spanning the four systems, seeded generators, gold resolutions.

`make(name, seed=S, count=N)` plans N instances of a class (exact variant shares), plants nothing
and returns them as data: the records to plant (`Instance.setup`), the description ops wrote, the
gold (actions with key arguments, end-state assertions, outcome, risk of each step) and the human
log. `plant(instances, platform)` writes their records through the admin routes. `vary(instances)`
re-words their descriptions (shorthand, forwarded mail, German, Spanish, a wrong or missing figure)
for the varied-wording set, leaving everything else as it was.
"""

from __future__ import annotations

from opsagent.errors import InputError
from opsagent.evals.catalogue._address import ADDRESS_REJECTED
from opsagent.evals.catalogue._common import make_standard
from opsagent.evals.catalogue._invoices import DAMAGE_CLAIM, DUPLICATE_INVOICE
from opsagent.evals.catalogue._model import (
    ExceptionClass, Gold, GoldAction, HumanAction, HumanLog, Instance, Outcome, StateAssertion, Variant,
)
from opsagent.evals.catalogue._shipping import CUSTOMS_DOCUMENTS_MISSING, LABEL_CANCELLED_ORDER, MISSED_PICKUP
from opsagent.evals.catalogue._stock import STOCK_COUNT_MISMATCH
from opsagent.evals.catalogue._tracking import TRACKING_OUT_OF_SYNC, TRACKING_STUCK
from opsagent.evals.catalogue._wording import KINDS as WORDING_KINDS, WORDINGS, kind_of, vary
from opsagent.evals.catalogue._weight_mismatch import WEIGHT_MISMATCH
from opsagent.tools.platform.scenarios import AdminWrite, HasBaseUrls, upload

CLASSES: dict[str, ExceptionClass] = {c.name: c for c in (
    WEIGHT_MISMATCH, ADDRESS_REJECTED, TRACKING_OUT_OF_SYNC, TRACKING_STUCK, STOCK_COUNT_MISMATCH,
    DUPLICATE_INVOICE, DAMAGE_CLAIM, MISSED_PICKUP, LABEL_CANCELLED_ORDER, CUSTOMS_DOCUMENTS_MISSING,
)}


def get_class(name: str) -> ExceptionClass:
    try:
        return CLASSES[name]
    except KeyError:
        known = ", ".join(CLASSES)
        raise InputError(f"unknown exception class {name!r}; the catalogue has {known}") from None


def make(name: str, *, seed: int, count: int, escalate_share: float | None = None) -> list[Instance]:
    """`count` seeded instances of class `name`; the same arguments always give the same instances."""
    cls = get_class(name)
    if count < 0 or (escalate_share is not None and not 0.0 <= escalate_share <= 1.0):
        raise InputError("count must be >= 0 and escalate_share within [0, 1]")
    shares = cls.shares(escalate_share)
    if cls.make is not None:
        return cls.make(seed, count, shares)
    return make_standard(cls, seed, count, shares)


def plant(instances: list[Instance], target: HasBaseUrls | dict[str, str]) -> None:
    """Write every instance's records into the running systems, one request per admin route (in
    the order routes first appear, which puts parents before the rows that reference them)."""
    merged: dict[tuple[str, str], list[dict]] = {}
    for inst in instances:
        for w in inst.setup:
            rows = merged.setdefault((w.system, w.route), [])
            rows += [r for r in w.records if r not in rows]
    upload(target, [AdminWrite(system=s, route=r, records=rows) for (s, r), rows in merged.items()])


__all__ = [
    "CLASSES", "ExceptionClass", "Gold", "GoldAction", "HumanAction", "HumanLog", "Instance", "Outcome",
    "StateAssertion", "Variant", "WORDINGS", "WORDING_KINDS", "get_class", "kind_of", "make", "plant", "vary",
]
