"""A scripted planner whose chosen cases need a human: it proposes a high-risk rebill, held for
approval; approved, the case goes on to resolve; rejected, it escalates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opsagent.agents.engines.base import GenerationRequest
from opsagent.evals.gold import conversation, gold_step


def held_then_decided(high_risk: set[str]) -> Callable[[GenerationRequest], dict[str, Any]]:
    """Gold steps, except for the shipments in `high_risk`: once both records are read, propose
    `tms_adjust_billed_weight` (high risk) to midway between scan and bill; after it ran, go on
    with the gold steps (the dispute claiming the scan resolves the case); after a rejection,
    finish escalated."""

    def respond(request: GenerationRequest) -> dict[str, Any]:
        _, entities, results = conversation(request)
        sid = entities.get("shipment_id")
        if sid in high_risk and {"wms_get_shipment", "tms_get_shipment"} <= set(results):
            evidence = {"scale_check": results["wms_get_shipment"]["scale_check"]}
            if results.get("tms_adjust_billed_weight") is not None:
                return gold_step(request)  # the playbook resolves only with a dispute open
            if "did not approve" in request.messages[-1].content:
                return {"evidence": evidence, "tool": "finish", "status": "escalated",
                        "reason": "The rebill was rejected; a human takes over."}
            scanned = results["wms_get_shipment"]["scanned_weight_kg"]
            billed = results["tms_get_shipment"]["billed_weight_kg"]
            midway = round((scanned + billed) / 2, 1)  # still above the scan: the dispute follows
            return {"evidence": evidence, "tool": "tms_adjust_billed_weight",
                    "args": {"shipment_id": sid, "billed_weight_kg": midway,
                             "reason": f"rebill to {midway} kg pending the dispute"}}
        return gold_step(request)

    return respond
