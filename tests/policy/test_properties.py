"""Property: the engine never allows a tool outside the allowlist, or arguments its schema rejects."""

from __future__ import annotations

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsagent.errors import ToolError
from opsagent.policy import ToolCallRequest

ALLOWED = ["wms_get_shipment", "tms_get_shipment", "tms_open_weight_dispute", "wms_request_rescan"]
TOOLS = [*ALLOWED, "tms_adjust_billed_weight", "tms_withdraw_weight_dispute", "delete_everything"]
KEYS = ["shipment_id", "claimed_weight_kg", "reason", "dispute_id", "billed_weight_kg", "extra"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
# Mostly well-formed values for the keys tools use, so that some draws are allowed at all.
plausible = st.sampled_from(["SHP-1", "SHP-2", "", "x" * 600]) | st.floats(-10, 20000) | json_values

requests = st.builds(
    ToolCallRequest,
    case_id=st.just("CASE-1"),
    exception_type=st.sampled_from(["weight_mismatch", "weight_mismatch", "lost_parcel", ""]),
    step=st.integers(0, 50),
    tool=st.sampled_from(TOOLS) | st.text(max_size=30),
    args=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), plausible, max_size=4),
    entities=st.just({"shipment_id": "SHP-1"}),
)


def _schema_valid(registry, request: ToolCallRequest) -> bool:
    try:
        spec = registry.get(request.tool)
    except ToolError:
        return False
    return jsonschema.Draft202012Validator(spec.parameters).is_valid(request.args)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests)
def test_never_allows_outside_allowlist_or_invalid_args(engine, registry, request) -> None:
    decision = engine.decide(request)
    in_allowlist = request.exception_type == "weight_mismatch" and request.tool in engine.allowed_tools(
        "weight_mismatch"
    )
    if not in_allowlist or not _schema_valid(registry, request):
        assert decision.verdict == "deny"
    if decision.verdict == "allow":
        assert request.tool in ALLOWED and decision.risk == "low"
        assert request.args.get("shipment_id") == "SHP-1"
    assert decision.reasons and decision.checks


@settings(max_examples=200, deadline=None)
@given(
    weight=st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.booleans(),
    reason=st.text(max_size=700),
)
def test_dispute_allowed_only_within_limits(engine, weight, reason) -> None:
    args = {"shipment_id": "SHP-1", "claimed_weight_kg": weight, "reason": reason}
    request = ToolCallRequest(
        case_id="C", exception_type="weight_mismatch", step=1, tool="tms_open_weight_dispute", args=args,
        entities={"shipment_id": "SHP-1"},
        observations={"wms_get_shipment": {"scanned_weight_kg": weight, "scale_check": "passed"}},
    )
    within = (
        not isinstance(weight, bool) and 0 < weight <= 10000 and 1 <= len(reason) <= 500
    )
    assert (engine.decide(request).verdict == "allow") is within
