"""Scripted planner behaviours for tests that run the planner inside a Ray actor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opsagent.agents.engines.base import GenerationRequest
from opsagent.evals.gold import conversation, gold_step


def gold_except(high_risk: set[str]) -> Callable[[GenerationRequest], dict[str, Any]]:
    """Gold steps, except that for the shipments in `high_risk` the planner proposes an
    irreversible billed-weight change once both records were read."""

    def respond(request: GenerationRequest) -> dict[str, Any]:
        _, entities, results = conversation(request)
        sid = entities.get("shipment_id")
        if sid in high_risk and {"wms_get_shipment", "tms_get_shipment"} <= set(results):
            return {"evidence": {"scale_check": results["wms_get_shipment"]["scale_check"]},
                    "tool": "tms_adjust_billed_weight",
                    "args": {"shipment_id": sid, "billed_weight_kg": 0.5, "reason": "rebill"}}
        return gold_step(request)

    return respond
