"""The catalogue: its classes, seeded generators, planted inconsistencies, gold, human logs."""

from __future__ import annotations

from collections import Counter

import pytest

from opsagent.agents.case import ExceptionReport
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.errors import InputError
from opsagent.evals.catalogue import CLASSES, make, plant
from opsagent.evals.evalset import make_eval_set
from opsagent.evals.scoring import snapshots
from opsagent.policy.checks import assess_risk
from opsagent.policy.config import load_default_policy

SYSTEMS = {"wms", "tms", "erp", "tkt"}


def test_classes_span_the_four_systems_escalate_and_move_money():
    assert len(CLASSES) >= 10
    assert set().union(*(c.systems for c in CLASSES.values())) == SYSTEMS
    for cls in CLASSES.values():
        assert abs(sum(v.share for v in cls.variants.values()) - 1) < 1e-9, cls.name
        assert 0.2 <= cls.escalate_share <= 0.35, cls.name
    high = {c.name for c in CLASSES.values() if c.high_risk_share}
    assert high == {"stock_count_mismatch", "duplicate_invoice", "damage_claim"}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_generator_is_seeded_and_keeps_the_shares(name):
    first = make(name, seed=11, count=20)
    assert make(name, seed=11, count=20) == first
    other = make(name, seed=12, count=20)
    assert {tuple(i.entities.items()) for i in other}.isdisjoint({tuple(i.entities.items()) for i in first})
    counts = Counter(i.variant for i in first)
    for variant, v in CLASSES[name].variants.items():
        assert abs(counts[variant] - 20 * v.share) < 1, (variant, counts)
    assert all(i.gold.outcome == CLASSES[name].variants[i.variant].outcome for i in first)
    assert len({i.instance_id for i in first}) == 20 and first[3].instance_id == f"{name}-11-003"
    assert Counter(i.variant for i in make(name, seed=11, count=20, escalate_share=0.5))[
        next(k for k, v in CLASSES[name].variants.items() if v.outcome == "escalated")] >= 5
    with pytest.raises(InputError):
        make(name, seed=1, count=1, escalate_share=2.0)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_gold_fits_the_policy_and_the_playbook(name):
    policy = load_default_policy().classes[name].tools
    book = builtin_playbooks()[name]
    for field in book.evidence.values():  # the planner is shown what it must state
        tool, _, key = field.source.partition(".")
        assert key in book.observe[tool]
    assert len(book.examples) >= 6
    for inst in make(name, seed=5, count=12):
        ExceptionReport(exception_type=name, description=inst.description, entities=inst.entities)
        assert inst.keys and set(inst.keys) <= set(inst.entities.values())
        assert any(a.writes for a in inst.gold.actions) == (inst.gold.outcome == "resolved" or
                                                            "ticket_id" in inst.entities)
        for action in inst.gold.actions:
            tool = policy[action.tool]  # every gold tool is allowed for the class
            assert action.risk == assess_risk(tool, action.args)[0], (inst.instance_id, action.tool)
            for arg, entity in tool.scope.items():
                assert action.args.get(arg, inst.entities[entity]) == inst.entities[entity]
            for arg, constraint in tool.constraints.items():
                assert arg not in action.args or constraint.violation(action.args[arg]) is None
            assert set(action.key_args) <= set(action.args)
        if inst.gold.outcome == "escalated" and "ticket_id" in inst.entities:
            (assign,) = [a for a in inst.gold.actions if a.tool == "tkt_assign_ticket"]
            assert assign.args["team"] == inst.gold.team == tool_team(policy)


def tool_team(policy) -> str:
    (team,) = policy["tkt_assign_ticket"].constraints["team"].one_of
    return team


def test_planted_inconsistencies_are_real(platform, read):
    """Read through the tools (as an agent would) what each generator says it planted."""
    instances = make_eval_set(seed=4343, per_class=3)
    plant(instances, platform)
    before = snapshots(platform)
    for inst in instances:
        e, f, v = inst.entities, inst.facts, inst.variant
        name = inst.exception_type
        if "ticket_id" in e:
            ticket = read("tkt_get_ticket", ticket_id=e["ticket_id"]).body
            assert ticket["status"] == "open" and ticket["exception_type"] == name
        if name == "weight_mismatch":
            wms = read("wms_get_shipment", shipment_id=e["shipment_id"]).body
            tms = read("tms_get_shipment", shipment_id=e["shipment_id"]).body
            assert tms["billed_weight_kg"] > wms["scanned_weight_kg"]
            assert wms["scale_check"] == ("passed" if v == "dispute" else "failed")
        elif name == "address_rejected":
            label = read("tms_get_delivery_address", shipment_id=e["shipment_id"]).body
            record = read("erp_get_customer", customer_id=e["customer_id"]).body
            same = all(label[k] == record[k] for k in ("street", "postcode", "city", "country"))
            assert label["validation"] == "rejected" and same == (v == "unverified_address")
            assert record["address_status"] == ("verified" if v == "correct_from_erp" else "unverified")
        elif name == "tracking_out_of_sync":
            assert read("tms_get_tracking", shipment_id=e["shipment_id"]).body["status"] == "delivered"
            wms = read("wms_get_shipment", shipment_id=e["shipment_id"]).body
            assert wms["dispatch_status"] == ("shipped" if v == "record_delivery" else "packed")
        elif name == "tracking_stuck":
            tracking = read("tms_get_tracking", shipment_id=e["shipment_id"]).body
            assert tracking["status"] == ("in_transit" if v == "request_trace" else "lost")
            assert tracking["open_trace_id"] is None and tracking["last_event_at"] < ticket["created_at"]
        elif name == "stock_count_mismatch":
            stock = read("wms_get_stock", location_id=e["location_id"], sku=e["sku"]).body
            books = read("erp_get_inventory", site=e["site"], sku=e["sku"])
            if v == "not_on_books":
                assert books.status_code == 404
            else:
                assert books.body["book_quantity"] != stock["quantity"]
                assert stock["count_status"] == ("counted" if v == "book_to_count" else "uncounted")
        elif name == "duplicate_invoice":
            invoice = read("erp_get_invoice", invoice_id=e["invoice_id"]).body
            expected = {"void_open": ("duplicate", "open"), "refund_paid": ("duplicate", "paid"),
                        "amounts_differ": ("amount_differs", "open")}[v]
            assert (invoice["duplicate_check"], invoice["status"]) == expected
            assert invoice["duplicate_of"] == f["original"]
        elif name == "damage_claim":
            tracking = read("tms_get_tracking", shipment_id=e["shipment_id"]).body
            invoice = read("erp_get_invoice", invoice_id=e["invoice_id"]).body
            assert tracking["damage_reported"] == ("no" if v == "no_damage_record" else "yes")
            assert ticket["claim_amount"] == f["claim"] <= invoice["open_balance"]
            assert (f["claim"] > 100) == (v == "credit_large")
        elif name == "missed_pickup":
            pickup = read("tms_get_pickup", pickup_id=e["pickup_id"]).body
            assert pickup["status"] == ("missed" if v == "reschedule" else "completed")
        elif name == "label_cancelled_order":
            assert read("wms_get_order", order_id=e["order_id"]).body["status"] == "cancelled"
            tracking = read("tms_get_tracking", shipment_id=e["shipment_id"]).body
            assert tracking["label_status"] == "active"
            assert tracking["status"] == ("label_created" if v == "void_label" else "in_transit")
        elif name == "customs_documents_missing":
            customs = read("tms_get_customs", shipment_id=e["shipment_id"]).body
            assert customs["customs_status"] == "held"
            assert customs["missing_documents"] == ["commercial_invoice"]
            invoice = read("erp_get_commercial_invoice", order_id=e["order_id"])
            assert invoice.status_code == (200 if v == "attach_invoice" else 404)
        else:
            raise AssertionError(f"no check for {name}")
        # and from the scorer's side: before anyone acts, the gold's end state is not there yet
        assert any(a.failure(before) for a in inst.gold.assertions) or not any(
            x.writes for x in inst.gold.actions), inst.instance_id


def test_a_damage_claims_credit_never_exceeds_its_invoice():
    """The ERP credits at most an invoice's open balance: a small claim on a cheap invoice is
    at most the invoice (the ladder's training seed 1100000 once drew 89.61 EUR on a smaller one)."""
    facts = [i.facts for i in make("damage_claim", seed=1_100_000, count=200)]
    assert any(f["invoice_amount"] < 100 for f in facts)  # the case that went wrong is drawn
    assert all(f["claim"] <= f["invoice_amount"] for f in facts)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_descriptions_read_like_ops_notes(name):
    instances = make(name, seed=21, count=30)
    texts = [i.description for i in instances]
    assert len(set(texts)) == 30
    assert len({" ".join(t.split()[:2]) for t in texts}) >= 4  # several wordings
    for inst in instances:  # every note names at least one of the records it is about
        assert any(value in inst.description for value in inst.entities.values())


def test_human_logs_mostly_follow_the_gold():
    instances = [i for name in CLASSES for i in make(name, seed=31, count=40)]
    again = [i for name in CLASSES for i in make(name, seed=31, count=40)]
    assert [i.human for i in instances] == [i.human for i in again]
    deviations = Counter(i.human.deviation for i in instances)
    share = 1 - deviations[None] / len(instances)
    assert 0.1 <= share <= 0.3, deviations
    kinds = {"extra_read", "skipped_read", "over_escalated", "other_team", "ticket_left_open"}
    assert kinds <= set(deviations)
    for inst in instances:
        log = inst.human
        tools = [a.tool for a in log.actions]
        times = [a.at for a in log.actions]
        assert times == sorted(times) and log.minutes >= 1
        if log.deviation is None:
            assert tools == [a.tool for a in inst.gold.actions] and log.outcome == inst.gold.outcome
        elif log.deviation == "over_escalated":
            assert inst.gold.outcome == "resolved" and log.outcome == "escalated"
        elif log.deviation == "other_team":
            (assign,) = [a for a in log.actions if a.tool == "tkt_assign_ticket"]
            assert assign.args["team"] != inst.gold.team
        elif log.deviation == "ticket_left_open":
            assert log.outcome is None and "tkt_resolve_ticket" not in tools
