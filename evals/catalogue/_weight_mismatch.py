"""weight_mismatch: the carrier billed more weight than the warehouse scanned (WMS, TMS).

Planted by `tools.platform.scenarios.weight_mismatch_records`, the same data the demo injects.
Resolved: the scale passed its check, so the scan is authoritative: open a weight dispute for it.
Escalated: the scale failed its last check; nobody can say which weight is right.
No ticket: this class is kept exactly as the demo and the existing tests know it.
"""

from __future__ import annotations

from opsagent.evals.catalogue._common import read, write
from opsagent.evals.catalogue._model import ExceptionClass, Gold, Instance, Planted, StateAssertion, Variant
from opsagent.tools.platform.scenarios import InjectedException, weight_mismatch_records


def dispute_reason(scanned: float, billed: float) -> str:
    """The gold dispute reason (the words `evals.gold.gold_step` uses)."""
    return f"Scan {scanned} kg on a checked scale, billed {billed} kg."


def _gold(inj: InjectedException) -> Gold:
    sid = inj.entities["shipment_id"]
    scanned, billed = inj.facts["scanned_weight_kg"], inj.facts["billed_weight_kg"]
    actions = [read("wms_get_shipment", shipment_id=sid), read("tms_get_shipment", shipment_id=sid)]
    unchanged = StateAssertion(system="tms", table="shipments", where={"shipment_id": sid}, count=1,
                               values={"billed_weight_kg": billed})
    disputes = {"system": "tms", "table": "weight_disputes", "where": {"shipment_id": sid}}
    if inj.expected_status == "escalated":
        return Gold(outcome="escalated", actions=actions, reason="Scale check failed, so the scan is not "
                    "authoritative.", assertions=[unchanged, StateAssertion(**disputes, count=0)])
    dispute = write("tms_open_weight_dispute", {"shipment_id": sid, "claimed_weight_kg": scanned,
                                                "reason": dispute_reason(scanned, billed)},
                    ["shipment_id", "claimed_weight_kg"])
    return Gold(outcome="resolved", actions=[*actions, dispute], reason="Opened a dispute for the scan.",
                assertions=[unchanged, StateAssertion(**disputes, count=1, values={
                    "claimed_weight_kg": scanned, "billed_weight_kg": billed, "status": "open"})])


def _make(seed: int, count: int, shares: dict[str, float]) -> list[Instance]:
    from opsagent.evals.catalogue._common import instance

    total = sum(shares.values())
    writes, injected = weight_mismatch_records(count=count, seed=seed,
                                               suspect_share=shares["scale_failed"] / total)
    out = []
    for index, inj in enumerate(injected):
        sid = inj.entities["shipment_id"]
        own = [[r for r in w.records if r.get("shipment_id") in (None, sid)] for w in writes]  # + scales
        mine = [w.model_copy(update={"records": rows}) for w, rows in zip(writes, own, strict=True)]
        variant = "dispute" if inj.expected_status == "resolved" else "scale_failed"
        planted = Planted(description=inj.description, entities=inj.entities, setup=mine, gold=_gold(inj),
                          facts=inj.facts)
        out.append(instance(WEIGHT_MISMATCH, seed, index, variant, planted))
    return out


WEIGHT_MISMATCH = ExceptionClass(
    name="weight_mismatch",
    summary="Carrier billed a weight above the warehouse scan; dispute it if the scale passed its check.",
    systems=("wms", "tms"),
    variants={
        "dispute": Variant(0.7, "resolved", note="scale passed: open a dispute claiming the scan"),
        "scale_failed": Variant(0.3, "escalated", note="scale failed its check: nothing is authoritative"),
    },
    identifying=("shipment_id",),
    make=_make,
)
