"""Gold resolutions, written as a planner: given the conversation so far, the correct next step.

Used to record a playbook's worked examples from real runs on the sandbox platform, and by tests
as a scripted engine's responder. It reads only what the planner reads (the messages), so a gold
run goes through exactly the same policy, executor and trace path as a model's run.

`gold_step` is weight_mismatch's gold written as logic over the conversation (it serves any
instance of the class); `scripted_gold(instance, playbook)` serves any catalogue instance by
replaying its gold actions (known when the instance was made) with the playbook's evidence as
read so far.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opsagent.agents.engines.base import GenerationRequest
from opsagent.errors import InputError

if TYPE_CHECKING:
    from opsagent.agents.playbooks.model import Playbook
    from opsagent.evals.catalogue import Instance

_RESULT = re.compile(r"^Result of (\w+): (.*)$", re.S)
_FAILED = re.compile(r"^(\w+) (?:failed|needs human approval)")
_CASE = re.compile(r"^New exception \((\w+)\)\. Entities: (\{.*?\})\.\n", re.S)


def conversation(request: GenerationRequest) -> tuple[str, dict[str, str], dict[str, Any]]:
    """This case's class, entities and the results read so far (tool -> body)."""
    messages = request.messages
    start = max(i for i, m in enumerate(messages) if m.role == "user" and _CASE.match(m.content))
    match = _CASE.match(messages[start].content)
    assert match is not None
    results: dict[str, Any] = {}
    for m in messages[start + 1:]:
        if m.role == "user" and (r := _RESULT.match(m.content)):
            results[r.group(1)] = json.loads(r.group(2))
        elif m.role == "user" and (f := _FAILED.match(m.content)):
            results[f.group(1)] = None  # tried, did not succeed
    return match.group(1), json.loads(match.group(2)), results


def steps_taken(request: GenerationRequest) -> int:
    """How many planner outputs this case has had so far (its assistant turns)."""
    messages = request.messages
    start = max(i for i, m in enumerate(messages) if m.role == "user" and _CASE.match(m.content))
    return sum(m.role == "assistant" for m in messages[start + 1:])


def scripted_gold(instance: Instance, playbook: Playbook) -> Callable[[GenerationRequest], dict[str, Any]]:
    """A responder that emits `instance`'s gold actions in order, then finishes with its outcome."""

    def respond(request: GenerationRequest) -> dict[str, Any]:
        _, _, results = conversation(request)
        evidence = {}
        for name, field in playbook.evidence.items():
            tool, _, key = (field.source or "").partition(".")
            read = results.get(tool)
            value = read.get(key, field.unknown) if isinstance(read, dict) else field.unknown
            evidence[name] = value if field.values is None or str(value) in field.values else field.unknown
        taken, actions = steps_taken(request), instance.gold.actions
        if taken < len(actions):
            return {"evidence": evidence, "tool": actions[taken].tool, "args": dict(actions[taken].args)}
        return {"evidence": evidence, "tool": "finish", "status": instance.gold.outcome,
                "reason": instance.gold.reason}

    return respond


def gold_step(request: GenerationRequest) -> dict[str, Any]:
    """The gold next step for the case at the end of `request`'s conversation."""
    exception_type, entities, results = conversation(request)
    if exception_type != "weight_mismatch":
        raise InputError(f"no gold resolution for {exception_type!r}")
    return _weight_mismatch(entities["shipment_id"], results)


def _weight_mismatch(shipment_id: str, results: dict[str, Any]) -> dict[str, Any]:
    wms = results.get("wms_get_shipment")
    evidence = {"scale_check": wms["scale_check"] if wms else "unknown"}
    if any(t in results and results[t] is None for t in ("wms_get_shipment", "tms_get_shipment")):
        return {"evidence": evidence, "tool": "finish", "status": "escalated",
                "reason": "A shipment record could not be read."}
    if wms is None:
        return {"evidence": evidence, "tool": "wms_get_shipment", "args": {"shipment_id": shipment_id}}
    if "tms_get_shipment" not in results:
        return {"evidence": evidence, "tool": "tms_get_shipment", "args": {"shipment_id": shipment_id}}
    if wms["scale_check"] != "passed":
        return {"evidence": evidence, "tool": "finish", "status": "escalated",
                "reason": "Scale check failed, so the scan is not authoritative."}
    if "tms_open_weight_dispute" in results and results["tms_open_weight_dispute"] is None:
        return {"evidence": evidence, "tool": "finish", "status": "escalated",
                "reason": "The carrier did not accept the weight dispute."}
    dispute = results.get("tms_open_weight_dispute")
    if dispute is None:
        tms = results["tms_get_shipment"]
        return {"evidence": evidence, "tool": "tms_open_weight_dispute", "args": {
            "shipment_id": shipment_id, "claimed_weight_kg": wms["scanned_weight_kg"],
            "reason": f"Scan {wms['scanned_weight_kg']} kg on a checked scale, billed {tms['billed_weight_kg']} kg.",
        }}
    return {"evidence": evidence, "tool": "finish", "status": "resolved",
            "reason": f"Opened dispute {dispute.get('dispute_id', '')} for the scanned weight."}
