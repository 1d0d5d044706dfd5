"""Each check on its own: the pass path and the block path."""

from __future__ import annotations

import pytest

from opsagent.policy import CheckContext, PolicyConfig, load_default_policy
from opsagent.policy.checks import (
    allowlisted,
    autonomy_mode,
    known_class,
    registered,
    risk_tier,
    schema_valid,
    scope,
)
from opsagent.policy.checks import constraints as constraints_check


@pytest.fixture
def ctx(registry) -> CheckContext:
    return CheckContext(load_default_policy(), registry)


def test_known_class(ctx, make_request) -> None:
    assert known_class(make_request("wms_get_shipment"), ctx) is None
    block = known_class(make_request("wms_get_shipment", exception_type="lost_parcel"), ctx)
    assert block.verdict == "deny" and "unknown exception class 'lost_parcel'" in block.reason


def test_allowlisted(ctx, make_request) -> None:
    assert allowlisted(make_request("tms_get_shipment"), ctx) is None
    block = allowlisted(make_request("tms_withdraw_weight_dispute", {"dispute_id": "D-1"}), ctx)
    assert block.verdict == "deny"
    assert "'tms_withdraw_weight_dispute' is not allowed for exception class 'weight_mismatch'" in block.reason


def test_registered(registry, make_request) -> None:
    config = PolicyConfig.from_yaml("classes: {weight_mismatch: {tools: {ghost_tool: {risk: low}}}}")
    ctx = CheckContext(config, registry)
    assert registered(make_request("wms_get_shipment"), ctx) is None
    block = registered(make_request("ghost_tool", {}), ctx)
    assert block.verdict == "deny" and "not in the tool registry" in block.reason


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, "'shipment_id' is a required property"),
        ({"shipment_id": 7}, "shipment_id: 7 is not of type 'string'"),
        ({"shipment_id": "SHP-1", "carrier": "x"}, "('carrier' was unexpected)"),
        ({"shipment_id": "S" * 5000}, "is too long"),
    ],
)
def test_schema_valid_blocks(ctx, make_request, args, expected) -> None:
    block = schema_valid(make_request("wms_get_shipment", args), ctx)
    assert block.verdict == "deny"
    assert block.reason.startswith("invalid arguments for 'wms_get_shipment': ")
    assert expected in block.reason
    assert len(block.reason) < 300  # a huge value is not echoed back whole


def test_schema_valid_passes_and_caches(ctx, make_request) -> None:
    assert schema_valid(make_request("wms_get_shipment"), ctx) is None
    assert "wms_get_shipment" in ctx.validators


def test_schema_valid_checks_string_formats(make_request) -> None:
    """A `format` in a tool's schema is checked, not only annotated (a date that is no date)."""
    from opsagent.tools.registry import ToolRegistry
    from opsagent.tools.spec import ToolSpec

    spec = ToolSpec(name="wms_get_shipment", system="wms", method="GET", path="/s", description="d",
                    parameters={"type": "object", "required": ["shipment_id", "on"], "properties": {
                        "shipment_id": {"type": "string"}, "on": {"type": "string", "format": "date"}}},
                    path_params=[], body_params=[], writes=False, reversible=None, inverse=None,
                    supports_dry_run=False)
    ctx = CheckContext(load_default_policy(), ToolRegistry([spec], {"wms": "http://wms.test"}))
    assert schema_valid(make_request("wms_get_shipment", {"shipment_id": "SHP-1", "on": "2026-12-05"}), ctx) is None
    block = schema_valid(make_request("wms_get_shipment", {"shipment_id": "SHP-1", "on": "5.12.2026"}), ctx)
    assert block is not None and block.verdict == "deny" and "on:" in block.reason and "date" in block.reason


def test_schema_valid_counts_further_problems(ctx, make_request) -> None:
    args = {"shipment_id": 1, "claimed_weight_kg": "x", "reason": None}
    block = schema_valid(make_request("tms_open_weight_dispute", args), ctx)
    assert "and 2 more problem(s)" in block.reason


def _dispute(**overrides):
    return {"shipment_id": "SHP-1", "claimed_weight_kg": 12.5, "reason": "scale says 12.5", **overrides}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (_dispute(claimed_weight_kg=10001), "claimed_weight_kg must be <= 10000, got 10001"),
        (_dispute(claimed_weight_kg=0), "claimed_weight_kg must be > 0"),
        (_dispute(reason="r" * 501), "reason must be at most 500 characters, got 501"),
        (_dispute(reason=""), "reason must be at least 1 characters"),
    ],
)
def test_constraints_block(ctx, make_request, args, expected) -> None:
    block = constraints_check(make_request("tms_open_weight_dispute", args), ctx)
    assert block.verdict == "deny" and expected in block.reason


def test_constraints_pass(ctx, make_request) -> None:
    request = make_request("tms_open_weight_dispute", _dispute(claimed_weight_kg=10000))
    assert constraints_check(request, ctx) is None


def test_constraints_on_an_argument_the_tool_lacks_deny(registry, make_request) -> None:
    config = PolicyConfig.from_yaml(
        "classes: {weight_mismatch: {tools: {wms_get_shipment: "
        "{risk: low, constraints: {shipmnt_id: {max_length: 9}}}}}}"
    )
    block = constraints_check(make_request("wms_get_shipment"), CheckContext(config, registry))
    assert block.verdict == "deny" and "'shipmnt_id'" in block.reason


def test_scope_pass(ctx, make_request) -> None:
    assert scope(make_request("wms_get_shipment", {"shipment_id": "SHP-1"}), ctx) is None


@pytest.mark.parametrize(
    ("args", "entities", "expected"),
    [
        ({"shipment_id": "SHP-2"}, {"shipment_id": "SHP-1"}, "shipment_id='SHP-2' is outside case CASE-1"),
        ({"shipment_id": "shp-1"}, {"shipment_id": "SHP-1"}, "outside case"),
        ({"shipment_id": "SHP-1"}, {"order_id": "O-1"}, "case CASE-1 names none"),
    ],
)
def test_scope_blocks(ctx, make_request, args, entities, expected) -> None:
    block = scope(make_request("wms_get_shipment", args, entities=entities), ctx)
    assert block.verdict == "deny" and expected in block.reason


def test_scope_mapped_to_another_entity_name(registry, make_request) -> None:
    config = PolicyConfig.from_yaml(
        "classes: {weight_mismatch: {tools: {wms_get_shipment: {risk: low, scope: {shipment_id: parcel}}}}}"
    )
    ctx = CheckContext(config, registry)
    assert scope(make_request("wms_get_shipment", entities={"parcel": "SHP-1"}), ctx) is None
    assert scope(make_request("wms_get_shipment", entities={"shipment_id": "SHP-1"}), ctx).verdict == "deny"


def test_a_scoped_argument_left_out_does_not_end_the_scope_check(registry, make_request) -> None:
    """`reason` (scoped first) is not given; `shipment_id` is still checked."""
    config = PolicyConfig.from_yaml(
        "classes: {weight_mismatch: {tools: {wms_request_rescan: "
        "{risk: low, scope: {reason: ticket_id, shipment_id: shipment_id}}}}}"
    )
    ctx = CheckContext(config, registry)
    rescan = {"shipment_id": "SHP-2"}
    block = scope(make_request("wms_request_rescan", rescan), ctx)
    assert block is not None and block.verdict == "deny"
    assert "shipment_id='SHP-2' is outside case CASE-1" in block.reason
    assert scope(make_request("wms_request_rescan", {**rescan, "shipment_id": "SHP-1"}), ctx) is None


def test_risk_tier(ctx, make_request) -> None:
    assert risk_tier(make_request("wms_get_shipment"), ctx) is None
    assert ctx.risk == "low"
    args = {"shipment_id": "SHP-1", "billed_weight_kg": 12.5, "reason": "rescan"}
    block = risk_tier(make_request("tms_adjust_billed_weight", args), ctx)
    assert (block.verdict, block.risk, ctx.risk) == ("require_approval", "high", "high")
    assert "irreversible" in block.reason


@pytest.mark.parametrize("mode", ["autonomus", "", None])
def test_a_mode_that_is_none_of_the_three_denies_a_write(registry, make_request, mode) -> None:
    """The engine only ever passes a `Mode` (an unreadable one is supervised); a chain that passes
    anything else gets a deny, whatever the chain decided, never the write."""
    ctx = CheckContext(load_default_policy(), registry, mode=mode)
    dispute = make_request("tms_open_weight_dispute", {"shipment_id": "SHP-1", "claimed_weight_kg": 1.0,
                                                       "reason": "r"})
    for verdict in ("allow", "require_approval"):
        block = autonomy_mode(dispute, ctx, verdict)
        assert block is not None and block.verdict == "deny"
        assert block.reason == f"unknown autonomy mode {mode!r}"
    assert autonomy_mode(make_request("wms_get_shipment"), ctx, "allow") is None  # reads: untouched
