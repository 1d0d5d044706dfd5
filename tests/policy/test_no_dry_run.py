"""A write its system cannot preview is high risk, whatever tier the policy file gives it."""

from __future__ import annotations

import pytest

from opsagent.policy import PolicyConfig, PolicyEngine, ToolCallRequest, args_digest
from opsagent.policy.no_dry_run import no_dry_run_risk, no_idempotency_risk
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.sources import McpSource
from opsagent.tools.spec import ToolSpec

POLICY = """
classes:
  parcel_hold:
    initial_mode: autonomous
    tools:
      get_parcel: {risk: low}
      hold_parcel: {risk: low}
      release_parcel: {risk: low, note: the policy file calls it low}
"""
ARGS = {"parcel_id": "P-1"}


def _spec(name: str, *, writes: bool, dry_run: bool, keyed: bool = True) -> ToolSpec:
    return ToolSpec(
        name=name, system="parcels", source="mcp", method="MCP", path=name, description=name,
        parameters={"type": "object", "properties": {"parcel_id": {"type": "string"}},
                    "required": ["parcel_id"], "additionalProperties": False},
        path_params=[], body_params=["parcel_id"], writes=writes, reversible=None, inverse=None,
        supports_dry_run=dry_run, idempotency="argument" if writes and keyed else None,
    )


READ = _spec("get_parcel", writes=False, dry_run=False)
PREVIEWED = _spec("hold_parcel", writes=True, dry_run=True)
BLIND = _spec("release_parcel", writes=True, dry_run=False)
UNKEYED = _spec("hold_parcel", writes=True, dry_run=True, keyed=False)


@pytest.fixture
def engine() -> PolicyEngine:
    source = McpSource(name="parcels", transport="stdio", command=["parcels-server"])
    return PolicyEngine(PolicyConfig.from_yaml(POLICY), ToolRegistry([READ, PREVIEWED, BLIND], sources=[source]))


def _request(tool: str) -> ToolCallRequest:
    return ToolCallRequest(case_id="CASE-1", exception_type="parcel_hold", step=1, tool=tool, args=ARGS,
                           entities={})


def test_the_rule_names_only_writes_without_a_dry_run() -> None:
    assert no_dry_run_risk(READ) is None and no_dry_run_risk(PREVIEWED) is None
    assert no_dry_run_risk(BLIND) == "release_parcel writes and parcels offers no dry run to preview it"


def test_a_blind_write_needs_approval_even_when_the_policy_says_low(engine) -> None:
    decision = engine.decide(_request("release_parcel"))
    assert (decision.verdict, decision.risk) == ("require_approval", "high")
    assert "offers no dry run" in decision.reasons[0] and "risk_tier" in decision.checks


@pytest.mark.parametrize("tool", ["get_parcel", "hold_parcel"])
def test_reads_and_previewable_writes_keep_the_policy_tier(engine, tool) -> None:
    decision = engine.decide(_request(tool))
    assert (decision.verdict, decision.risk) == ("allow", "low")


def test_an_approved_blind_write_runs_recorded_as_high_risk(engine) -> None:
    decision = engine.authorize(_request("release_parcel"), approved_digest=args_digest("release_parcel", ARGS),
                                approved_by="alice")
    assert (decision.verdict, decision.risk) == ("allow", "high") and decision.permit is not None
    assert decision.reasons[0] == "approved by alice"


def test_a_write_that_cannot_be_made_idempotent_is_high_risk() -> None:
    """Hole 6: an MCP write with no idempotency key could apply twice when re-sent; it never runs
    on the planner's say-so, and the rule names why."""
    assert no_idempotency_risk(PREVIEWED) is None and no_idempotency_risk(READ) is None
    assert "cannot apply it idempotently" in no_idempotency_risk(UNKEYED)
    source = McpSource(name="parcels", transport="stdio", command=["parcels-server"])
    engine = PolicyEngine(PolicyConfig.from_yaml(POLICY), ToolRegistry([READ, UNKEYED, BLIND], sources=[source]))
    decision = engine.decide(_request("hold_parcel"))
    assert (decision.verdict, decision.risk) == ("require_approval", "high")
    assert "idempotently" in decision.reasons[0]
