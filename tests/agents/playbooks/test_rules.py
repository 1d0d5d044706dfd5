"""SOP rules in playbooks: validated at load, they withhold only what the pinned evidence rules out,
never a step of an approved example; after a setback they never withhold the escalation, and
after a human's rejection they stand aside."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml

from opsagent.agents.candidates import build_candidates
from opsagent.agents.case import Case, ExceptionReport, Step
from opsagent.agents.playbooks.model import builtin_playbooks, load_playbook
from opsagent.agents.playbooks.rules import SopRule
from opsagent.errors import ConfigError
from tests.agents.test_candidates import _tools, _weight_case

BOOKS = builtin_playbooks()


def _decisions(book, registry, case) -> list[str]:
    return [c.decision for c in build_candidates(book, _tools(registry, book.exception_type), case)]


def test_every_shipped_class_states_its_rules():
    assert all(book.rules for book in BOOKS.values())


def test_no_shipped_rule_withholds_a_step_of_an_approved_example(registry):
    """Walk every worked example (human-approved resolutions, routine and escalating): at each
    step the approved decision is still among the candidates the rules leave."""
    checked = 0
    for cls, book in BOOKS.items():
        for number, example in enumerate(book.examples):
            case = Case(report=example.report)
            for i, turn in enumerate(example.turns):
                out = turn.output
                decision = f"finish:{out['status']}" if out["tool"] == "finish" else out["tool"]
                offered = {d.split("(")[0] if not d.startswith("finish") else d
                           for d in _decisions(book, registry, case)}
                assert decision in offered, (cls, number, i, decision, offered)
                checked += 1
                if turn.observation is None:
                    break
                ok = turn.observation.startswith("Result of")
                case.steps.append(Step(step=i + 1, tool=out["tool"], args=out.get("args", {}),
                                       evidence=out["evidence"], executed=True, ok=ok, verdict="allow",
                                       result=json.loads(turn.observation.split(": ", 1)[1]) if ok else None,
                                       error=None if ok else turn.observation))
    assert checked > 200


def test_routine_evidence_leaves_the_routine_step_alone(registry):
    book = BOOKS["weight_mismatch"]
    passed = _decisions(book, registry, _weight_case(scale="passed"))
    assert "wms_request_rescan" not in passed and "tms_open_weight_dispute" in passed
    failed = _decisions(book, registry, _weight_case(scale="failed"))
    assert "finish:escalated" in failed and "wms_request_rescan" in failed
    # a verified address: the only step left is the correction, decided by the rule alone
    case = Case(report=ExceptionReport(exception_type="address_rejected", description="x",
                                       entities={"shipment_id": "SHP-1", "customer_id": "C-1", "ticket_id": "T-1"}))
    case.steps += [Step(step=1, tool="tms_get_delivery_address", executed=True, ok=True, verdict="allow",
                        result={"shipment_id": "SHP-1", "address": "x"}),
                   Step(step=2, tool="erp_get_customer", executed=True, ok=True, verdict="allow",
                        result={"customer_id": "C-1", "address_status": "verified", "address": "y"})]
    address = BOOKS["address_rejected"]
    assert _decisions(address, registry, case) == ["tms_update_delivery_address"]
    unverified = case.model_copy(deep=True)
    unverified.steps[1].result["address_status"] = "unverified"
    assert any(d.startswith("tkt_assign_ticket") for d in _decisions(address, registry, unverified))


def test_after_a_denial_the_evidence_still_rules_out_what_it_did(registry):
    """A denial leaves the evidence as read: a passed scale check still rules out the rescan."""
    book = BOOKS["weight_mismatch"]
    assert "wms_request_rescan" not in _decisions(book, registry, _weight_case(scale="passed"))
    denied = _weight_case(scale="passed")
    denied.steps.append(Step(step=3, tool="tms_adjust_billed_weight", verdict="deny", reasons=["no"]))
    after = _decisions(book, registry, denied)
    assert "wms_request_rescan" not in after and "finish:escalated" in after


def test_after_a_human_rejection_no_rule_applies(registry):
    """A human who rejects a step contradicts the SOP's reading of the evidence: every step is
    offered again, the hand-off too."""
    book = BOOKS["weight_mismatch"]
    rejected = _weight_case(scale="passed")
    rejected.steps.append(Step(step=3, tool="tms_open_weight_dispute", verdict="require_approval",
                               executed=False, error="not approved: wrong weight"))
    assert "wms_request_rescan" in _decisions(book, registry, rejected)


def test_a_credit_the_days_budget_refuses_is_escalated_never_handed_to_customer_service(registry):
    """The carrier recorded the damage, so the claim is credited, not sent back to customer service
    for the customer's evidence. When the policy refuses the credit (the day's spending limit for
    the class is used up), the case goes to a human: once the credit is refused for good, the
    escalation is the one step left, decided by the rule alone, with the refusal as its reason."""
    book = BOOKS["damage_claim"]
    number = next(n for n, e in enumerate(book.examples) if e.turns[3].output["tool"] == "erp_issue_credit")
    read = _walked(book, number, 3)
    assert read.steps[-1].evidence["damage_reported"] == "yes"
    assert [c.decision for c in build_candidates(book, _tools(registry, "damage_claim"), read)] == [
        "erp_issue_credit"]  # before the refusal: the rule withholds the hand-off and the escalation
    credit = book.examples[number].turns[3].output
    limit = "daily spend on erp_issue_credit for damage_claim (EUR): 20448.4 would exceed the limit of 20000"
    for attempt in (4, 5):
        read.steps.append(Step(step=attempt, tool="erp_issue_credit", args=credit["args"],
                               evidence=credit["evidence"], verdict="deny", reasons=[limit]))
        offered = build_candidates(book, _tools(registry, "damage_claim"), read)
        assert not any(c.step.tool == "tkt_assign_ticket" for c in offered)
        assert "finish:escalated" in [c.decision for c in offered]
    (last,) = offered  # the credit, refused twice, is no longer offered
    assert last.decision == "finish:escalated" and limit in last.step.reason


def test_a_rule_that_would_withhold_everything_withholds_nothing(registry):
    book = BOOKS["tracking_stuck"]
    rule = SopRule(name="all", why="everything", when={"carrier_status": "in_transit"},
                   read=["tms_get_tracking"], withhold=["tms_request_trace", "tkt_assign_ticket",
                                                         "finish:escalated"])
    greedy = book.model_copy(update={"rules": [rule]})
    case = Case(report=ExceptionReport(exception_type="tracking_stuck", description="x",
                                       entities={"tracking_number": "TRK-1", "ticket_id": "TKT-1"}))
    case.steps.append(Step(step=1, tool="tms_get_tracking", executed=True, ok=True, verdict="allow",
                           result={"status": "in_transit"}))
    everything = _decisions(book.model_copy(update={"rules": []}), registry, case)
    assert _decisions(greedy, registry, case) == everything
    assert _decisions(book, registry, case) == ["tms_request_trace"]


def _load(tmp_path, rule: dict) -> None:
    from importlib import resources

    folder = resources.files("opsagent.agents.playbooks")
    book = yaml.safe_load((folder / "weight_mismatch.yaml").read_text())
    book["rules"] = [rule]
    path = tmp_path / "weight_mismatch.yaml"
    path.write_text(yaml.safe_dump(book))
    load_playbook(path)


GOOD = {"name": "r", "why": "a checked scan holds", "when": {"scale_check": "passed"},
        "read": ["wms_get_shipment"], "withhold": ["finish:escalated"]}


@pytest.mark.parametrize("change, message", [
    ({"when": {"weight": "passed"}}, "no evidence fact 'weight'"),
    ({"when": {"scale_check": "maybe"}}, "not ['maybe']"),
    ({"withhold": ["tms_delete_everything"]}, "'tms_delete_everything' is not a tool of this playbook"),
    ({"read": ["finish:escalated"]}, "'finish:escalated' is not a tool"),
    ({"withhold": []}, "withhold"),
    ({"unless": "x"}, "unless"),
    ({"name": "Bad Name"}, "name"),
    ({"until": ["tms_nothing"]}, "'tms_nothing' is not a tool of this playbook"),
    ({"withhold": ["tms_open_weight_dispute"], "until": ["tms_open_weight_dispute"]},
     "both withheld and ending the rule"),
])
def test_a_wrong_rule_is_refused_at_load(tmp_path, change, message):
    _load(tmp_path, GOOD)  # the good rule loads
    with pytest.raises(ConfigError, match="rule|withhold|unless|name") as err:
        _load(tmp_path, {**GOOD, **change})
    assert message in str(err.value)


def test_a_rule_may_rest_only_on_evidence_read_from_a_source(tmp_path):
    from importlib import resources

    book = yaml.safe_load((resources.files("opsagent.agents.playbooks") / "weight_mismatch.yaml").read_text())
    book["evidence"]["hunch"] = {"values": ["good", "bad"], "description": "the model's own view"}
    book["rules"] = [{**GOOD, "when": {"hunch": "good"}}]
    path = tmp_path / "weight_mismatch.yaml"
    path.write_text(yaml.safe_dump(book))
    with pytest.raises(ConfigError, match="model's choice"):
        load_playbook(path)
    book["rules"] = [GOOD, GOOD]
    path.write_text(yaml.safe_dump(book))
    with pytest.raises(ConfigError, match="two rules have this name"):
        load_playbook(path)


def test_a_rule_with_until_withholds_closing_only_until_the_write_succeeded(registry):
    """The SOP's 'then': an open duplicate is voided, then the ticket is resolved. Before the void
    the ticket cannot be resolved; after it, it can; a failed void ends no rule (it is a setback:
    the void can be tried again, or the case escalated, but the ticket is not resolved)."""
    book = BOOKS["duplicate_invoice"]
    number = next(n for n, e in enumerate(book.examples) if e.turns[1].output["tool"] == "erp_void_invoice")
    read = _walked(book, number, 1)
    assert _decisions(book, registry, read) == ["erp_void_invoice"]
    voided = _walked(book, number, 2)
    assert _decisions(book, registry, voided) == ["tkt_resolve_ticket"]
    failed = _walked(book, number, 2)
    failed.steps[-1] = failed.steps[-1].model_copy(update={"ok": False, "result": None, "error": "503"})
    after = {d.split("(")[0] for d in _decisions(book, registry, failed)}
    assert "tkt_resolve_ticket" not in after  # the duplicate is still open: not resolved
    assert {"erp_void_invoice", "finish:escalated"} <= after
    without = book.model_copy(update={"rules": [r for r in book.rules if not r.until]})
    assert set(_decisions(without, registry, read)) == {"erp_void_invoice", "tkt_resolve_ticket"}


def test_a_contradicted_pickup_is_assigned_then_escalated(registry):
    """missed_pickup's SOP: a pickup the carrier recorded as completed is not rebooked; its ticket
    is assigned (the model picks the team among the candidates), and only then is the case
    escalated."""
    book = BOOKS["missed_pickup"]
    number = next(n for n, e in enumerate(book.examples) if e.turns[1].output["tool"] == "tkt_assign_ticket")
    read = _walked(book, number, 1)
    assert read.steps[0].result["status"] == "completed"
    assert {d.split("(")[0] for d in _decisions(book, registry, read)} == {"tkt_assign_ticket"}
    assigned = _walked(book, number, 2)
    assert _decisions(book, registry, assigned) == ["finish:escalated"]
    without = book.model_copy(update={"rules": [r for r in book.rules if r.when.get("pickup_status") != ["completed"]]})
    assert {"tms_reschedule_pickup", "finish:escalated"} <= {
        d.split("(")[0] for d in _decisions(without, registry, read)}


def _walked(book, number: int, turns: int) -> Case:
    """Worked example `number` of `book` after its first `turns` steps, as the runner records them."""
    example = book.examples[number]
    case = Case(report=example.report)
    for i, turn in enumerate(example.turns[:turns]):
        out = turn.output
        case.steps.append(Step(step=i + 1, tool=out["tool"], args=out.get("args", {}), evidence=out["evidence"],
                               executed=True, ok=True, verdict="allow",
                               result=json.loads(turn.observation.split(": ", 1)[1])))
    return case


def test_what_the_rules_withheld_is_traced_with_the_rules_name(registry):
    """A verified address leaves one step, the correction, decided without the model; the
    planner's turn and its trace row name the steps withheld and the rule that withheld them."""
    from opsagent.agents.engines import ScriptedEngine
    from opsagent.agents.planner import Planner
    from opsagent.agents.runner import _planner_event
    from opsagent.agents.tracing.records import PlannerCallEvent

    book = BOOKS["address_rejected"]
    allowed = [t.name for t in _tools(registry, "address_rejected")]
    number = next(n for n, e in enumerate(book.examples) if "verified" in str(e.turns[1].observation)
                  and e.turns[2].output["tool"] == "tms_update_delivery_address")
    case = _walked(book, number, 2)
    engine = ScriptedEngine([])  # no model call may be made
    turn = asyncio.run(Planner(engine, BOOKS, registry).plan(case, allowed))
    assert turn.decided_by == "rule" and turn.step.tool == "tms_update_delivery_address"
    rule = "verified_address_is_corrected"
    assert [(w.decision, w.rule) for w in turn.withheld] == [("tkt_assign_ticket", rule),
                                                             ("finish:escalated", rule)]
    row = _planner_event(case, turn).to_row()
    assert json.loads(row["withheld"]) == PlannerCallEvent.from_row(row).withheld == [
        {"decision": "tkt_assign_ticket", "rule": rule}, {"decision": "finish:escalated", "rule": rule}]
    # the address unverified: nothing withheld, the model chooses among every step
    unverified = _walked(book, number, 2)
    unverified.steps[1].result["address_status"] = "unverified"
    engine = ScriptedEngine([{"tool": "tkt_assign_ticket"}])
    turn = asyncio.run(Planner(engine, BOOKS, registry).plan(unverified, allowed))
    engine.assert_done()
    assert turn.decided_by == "model" and turn.step.tool == "tkt_assign_ticket" and turn.withheld == []
    assert _planner_event(unverified, turn).to_row()["withheld"] is None
