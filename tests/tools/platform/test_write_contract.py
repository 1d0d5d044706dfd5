"""Every write endpoint of the four systems: a dry run returns the diff and changes nothing, an
idempotency key replays the same answer with no second effect, a reused key with another request
is refused; every write is classified reversible or not, with an inverse that exists."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from tests.tools.platform.conftest import gold_args

_KEYS = itertools.count(1)


def _ticket(planted) -> str:
    return planted("missed_pickup", "reschedule").entities["ticket_id"]


def _gold(name: str, variant: str, tool: str) -> Callable:
    return lambda planted, call: gold_args(planted(name, variant), tool)


def _after(name: str, variant: str, first: str, args: Callable[[dict, dict], dict]) -> Callable:
    """Run the gold's `first` write, then build the tested call from its arguments and result."""

    def make(planted, call):
        inst = planted(name, variant)
        done = call(first, gold_args(inst, first))
        assert done.ok, done.error
        return args(inst.entities, done.body)

    return make


def _rescan(planted, call):
    sid = planted("weight_mismatch", "dispute").entities["shipment_id"]
    done = call("wms_request_rescan", {"shipment_id": sid, "reason": "scan again"})
    return {"request_id": done.body["request_id"]}


def _stock_adjustment(planted, call):
    e = planted("stock_count_mismatch", "recount").entities
    return {"location_id": e["location_id"], "sku": e["sku"], "quantity_delta": -2, "reason": "2 damaged"}


def _ticket_then(first: str, body: dict) -> Callable:
    def make(planted, call):
        tid = _ticket(planted)
        assert call(first, {"ticket_id": tid, **body}).ok
        return {"ticket_id": tid}

    return make


# tool -> how to get valid arguments on fresh data (gold calls of catalogue instances where possible)
WRITES: dict[str, Callable] = {
    "wms_request_rescan": lambda planted, call: {
        "shipment_id": planted("weight_mismatch", "dispute").entities["shipment_id"], "reason": "scan again"},
    "wms_cancel_rescan_request": _rescan,
    "wms_update_dispatch_status": _gold("tracking_out_of_sync", "record_delivery",
                                        "wms_update_dispatch_status"),
    "wms_request_cycle_count": _gold("stock_count_mismatch", "recount", "wms_request_cycle_count"),
    "wms_cancel_cycle_count": _after("stock_count_mismatch", "recount", "wms_request_cycle_count",
                                     lambda e, body: {"count_id": body["count_id"]}),
    "wms_adjust_stock": _stock_adjustment,
    "tms_open_weight_dispute": _gold("weight_mismatch", "dispute", "tms_open_weight_dispute"),
    "tms_withdraw_weight_dispute": _after("weight_mismatch", "dispute", "tms_open_weight_dispute",
                                          lambda e, body: {"dispute_id": body["dispute_id"]}),
    "tms_adjust_billed_weight": lambda planted, call: {
        "shipment_id": planted("weight_mismatch", "dispute").entities["shipment_id"], "billed_weight_kg": 1.5,
        "reason": "carrier agreed"},
    "tms_request_trace": _gold("tracking_stuck", "request_trace", "tms_request_trace"),
    "tms_cancel_trace": _after("tracking_stuck", "request_trace", "tms_request_trace",
                               lambda e, body: {"trace_id": body["trace_id"]}),
    "tms_void_label": _gold("label_cancelled_order", "void_label", "tms_void_label"),
    "tms_update_delivery_address": _gold("address_rejected", "correct_from_erp",
                                         "tms_update_delivery_address"),
    "tms_attach_customs_document": _gold("customs_documents_missing", "attach_invoice",
                                         "tms_attach_customs_document"),
    "tms_reschedule_pickup": _gold("missed_pickup", "reschedule", "tms_reschedule_pickup"),
    "erp_issue_credit": _gold("damage_claim", "credit_small", "erp_issue_credit"),
    "erp_issue_refund": _gold("duplicate_invoice", "refund_paid", "erp_issue_refund"),
    "erp_void_invoice": _gold("duplicate_invoice", "void_open", "erp_void_invoice"),
    "erp_adjust_book_quantity": _gold("stock_count_mismatch", "book_to_count", "erp_adjust_book_quantity"),
    "tkt_add_note": lambda planted, call: {"ticket_id": _ticket(planted), "body": "called the carrier"},
    "tkt_assign_ticket": lambda planted, call: {"ticket_id": _ticket(planted), "team": "finance",
                                                "note": "needs a credit decision"},
    "tkt_unassign_ticket": _ticket_then("tkt_assign_ticket", {"team": "customs", "note": "wrong queue"}),
    "tkt_resolve_ticket": lambda planted, call: {"ticket_id": _ticket(planted), "resolution": "rebooked"},
    "tkt_reopen_ticket": _ticket_then("tkt_resolve_ticket", {"resolution": "rebooked"}),
}
_TEXT = ("reason", "note", "resolution", "body", "reference")


def test_every_write_tool_is_covered_and_classified(registry):
    writes = {s.name for s in registry if s.writes}
    assert writes == set(WRITES)
    for name in writes:
        spec = registry.get(name)
        assert spec.reversible is not None and spec.supports_dry_run, name
        if spec.inverse is not None:
            assert spec.reversible and registry.get(spec.inverse).writes, name
    irreversible = {n for n in writes if not registry.get(n).reversible}
    money_and_stock = {"erp_issue_refund", "erp_issue_credit", "erp_adjust_book_quantity", "tms_void_label"}
    assert money_and_stock <= irreversible


@pytest.mark.parametrize("tool", sorted(WRITES))
def test_dry_run_changes_nothing_and_keys_replay(tool, planted, call, registry, platform):
    args = WRITES[tool](planted, call)
    system = registry.get(tool).system
    before = platform.digest(system)

    preview = call(tool, args, dry_run=True)
    assert preview.ok, preview.error
    diff = preview.body["diff"]
    assert preview.body["dry_run"] is True and set(diff) == {"before", "after"}
    assert diff["before"] != diff["after"]
    assert platform.digest(system) == before

    key = f"contract-{tool}-{next(_KEYS)}"
    done = call(tool, args, idempotency_key=key)
    assert done.ok, done.error
    changed = platform.digest(system)
    assert changed != before

    again = call(tool, args, idempotency_key=key)
    assert (again.status_code, again.body) == (done.status_code, done.body)
    assert platform.digest(system) == changed  # no second effect

    text = next((k for k in _TEXT if k in args), None)
    other = {**args, text: "a different request"} if text else {k: f"{v}-other" for k, v in args.items()}
    reused = call(tool, other, idempotency_key=key)
    assert reused.status_code == 422 and "already used" in reused.error
    assert platform.digest(system) == changed
