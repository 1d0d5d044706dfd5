"""Candidate steps built in code: evidence and arguments pinned, notes composed, enums expanded."""

from __future__ import annotations

import json

import pytest

from opsagent.agents.candidates import build_candidates, compose
from opsagent.agents.case import Case, ExceptionReport, Step
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine

BOOKS = builtin_playbooks()


def _tools(registry, cls):
    return [registry.get(n) for n in PolicyEngine(load_default_policy(), registry).allowed_tools(cls)]


def _weight_case(scanned=12.7, billed=18.3, scale="passed") -> Case:
    case = Case(report=ExceptionReport(exception_type="weight_mismatch", description="billed 18.3 kg",
                                       entities={"shipment_id": "SHP-1"}))
    case.steps += [
        Step(step=1, tool="wms_get_shipment", executed=True, ok=True,
             result={"shipment_id": "SHP-1", "scanned_weight_kg": scanned, "scale_check": scale}),
        Step(step=2, tool="tms_get_shipment", executed=True, ok=True,
             result={"shipment_id": "SHP-1", "billed_weight_kg": billed, "open_dispute_id": None}),
    ]
    return case


def test_first_step_offers_the_first_read_or_escalating(registry):
    case = Case(report=ExceptionReport(exception_type="weight_mismatch", description="x",
                                       entities={"shipment_id": "SHP-1"}))
    found = build_candidates(BOOKS["weight_mismatch"], _tools(registry, "weight_mismatch"), case)
    assert [c.decision for c in found] == ["wms_get_shipment", "finish:escalated"]
    read = found[0]
    assert read.step.evidence == {"scale_check": "unknown"} and read.step.args == {"shipment_id": "SHP-1"}
    assert read.free == [] and read.option() == (
        '{"evidence":{"scale_check":"unknown"},"tool":"wms_get_shipment","args":{"shipment_id":"SHP-1"}}')


def test_a_write_is_pinned_to_what_was_read_and_its_note_composed(registry):
    unruled = BOOKS["weight_mismatch"].model_copy(update={"rules": []})  # rules: tests/agents/playbooks
    found = build_candidates(unruled, _tools(registry, "weight_mismatch"), _weight_case())
    by = {c.decision: c for c in found}
    assert set(by) >= {"tms_open_weight_dispute", "wms_request_rescan", "finish:escalated"}
    assert "finish:resolved" not in by  # the dispute must succeed before the case may resolve
    dispute = by["tms_open_weight_dispute"]
    assert dispute.step.evidence == {"scale_check": "passed"}
    assert dispute.step.args == {"shipment_id": "SHP-1", "claimed_weight_kg": 12.7,
                                 "reason": "Scan 12.7 kg on a checked scale, billed 18.3 kg."}
    assert dispute.free == []


def test_numbers_render_as_the_system_of_record_returned_them(registry):
    found = build_candidates(BOOKS["weight_mismatch"], _tools(registry, "weight_mismatch"),
                             _weight_case(scanned=12.7))
    option = next(c for c in found if c.step.tool == "tms_open_weight_dispute").option()
    assert '"claimed_weight_kg":12.7,' in option and "12.699999" not in option
    assert json.loads(option)["args"]["claimed_weight_kg"] == 12.7


def test_an_enum_argument_makes_one_candidate_per_value(registry):
    case = Case(report=ExceptionReport(exception_type="missed_pickup", description="x",
                                       entities={"pickup_id": "PU-1", "ticket_id": "TKT-1"}))
    case.steps.append(Step(step=1, tool="tms_get_pickup", executed=True, ok=True,
                           result={"pickup_id": "PU-1", "status": "completed"}))
    found = build_candidates(BOOKS["missed_pickup"], _tools(registry, "missed_pickup"), case)
    assigns = [c for c in found if c.step.tool == "tkt_assign_ticket"]
    teams = registry.get("tkt_assign_ticket").parameters["properties"]["team"]["enum"]
    assert [c.step.args["team"] for c in assigns] == teams
    assert assigns[0].decision == f"tkt_assign_ticket(team={teams[0]})"
    assert assigns[0].step.args["note"] == "Carrier recorded the pickup as completed; ops says it was missed."
    assert len({c.option() for c in found}) == len(found)  # every option tells itself apart


def test_an_argument_without_pin_or_template_is_left_free_for_the_model(registry):
    book = BOOKS["weight_mismatch"].model_copy(update={"notes": {}})
    found = build_candidates(book, _tools(registry, "weight_mismatch"), _weight_case())
    dispute = next(c for c in found if c.step.tool == "tms_open_weight_dispute")
    assert dispute.free == ["reason"]
    assert dispute.option().endswith('"claimed_weight_kg":12.7,"reason":')


def test_a_failed_last_step_is_named_first_in_the_finish_reason(registry):
    case = _weight_case()
    case.steps.append(Step(step=3, tool="tms_open_weight_dispute", executed=True, ok=False,
                           error="HTTP 500: internal error"))
    escalate = next(c for c in build_candidates(BOOKS["weight_mismatch"], _tools(registry, "weight_mismatch"),
                                                case) if c.decision == "finish:escalated")
    assert escalate.step.reason.startswith(
        "tms_open_weight_dispute could not be carried out: HTTP 500: internal error.")


@pytest.mark.parametrize(("template", "expected"), [
    ("Scan {wms_get_shipment.scanned_weight_kg} kg", "Scan 12.7 kg"),
    ("Shipment {shipment_id}, scale {scale_check}", "Shipment SHP-1, scale passed"),
    ("Dispute {tms_open_weight_dispute.dispute_id}", None),  # not read yet
    ("Nothing to fill", "Nothing to fill"),
])
def test_compose_fills_read_values_entities_and_evidence(template, expected):
    case = _weight_case()
    done = {s.tool: s.result for s in case.steps}
    assert compose(template, case, done, {"scale_check": "passed"}) == expected


def test_every_shipped_template_composes_on_the_worked_examples(registry):
    """The notes and finish reasons of every shipped playbook fill in on its own examples' paths,
    so no shipped class ever falls back to model-written text."""
    for cls, book in BOOKS.items():
        tools = _tools(registry, cls)
        for example in book.examples:
            case = Case(report=example.report)
            for i, turn in enumerate(example.turns):
                found = build_candidates(book, tools, case)
                assert all(not c.free for c in found if c.step.tool != "tms_adjust_billed_weight"), (
                    cls, i, [c.decision for c in found if c.free])
                if turn.observation is None:
                    break
                result = json.loads(turn.observation.split(": ", 1)[1]) if turn.observation.startswith(
                    "Result of") else None
                out = turn.output
                case.steps.append(Step(step=i + 1, tool=out["tool"], args=out.get("args", {}),
                                       evidence=out["evidence"], executed=True, ok=result is not None,
                                       result=result, verdict="allow"))
