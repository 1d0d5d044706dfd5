"""What each exception class's planner sees: its allowed tools, where they come from, their risk."""

from __future__ import annotations

from typing import TYPE_CHECKING

from opsagent.policy.config import RiskCondition, ToolPolicy
from opsagent.policy.no_dry_run import no_dry_run_risk

if TYPE_CHECKING:
    from opsagent.policy.engine import PolicyEngine
    from opsagent.tools.spec import ToolSpec


def class_tools(engine: PolicyEngine, exception_type: str) -> list[tuple[str, str, str, str, str, str]]:
    """One row per tool the planner is offered for the class (the policy's allowlist, limited to
    registered tools): name, system, source, read/write, risk, dry run."""
    class_policy = engine.config.classes.get(exception_type)
    if class_policy is None:
        return []
    rows = []
    for name in engine.allowed_tools(exception_type):
        spec = engine.registry.get(name)
        rows.append((name, spec.system, spec.source, "write" if spec.writes else "read",
                     listed_risk(class_policy.tools[name], spec), "yes" if spec.supports_dry_run else "no"))
    return rows


def listed_risk(policy: ToolPolicy, spec: ToolSpec) -> str:
    """The risk the policy gives the tool, as a reviewer reads it: `high`, `high (no dry run)`,
    `low`, or `low; high if amount > 200`."""
    if policy.risk == "high":
        return "high"
    if no_dry_run_risk(spec):
        return "high (no dry run)"
    if policy.high_if:
        return "low; high if " + " or ".join(_condition(c) for c in policy.high_if)
    return "low"


def _condition(condition: RiskCondition) -> str:
    parts = [f"{condition.arg} {op} {bound:g}" for bound, op in (
        (condition.above, ">"), (condition.at_least, ">="), (condition.below, "<"), (condition.at_most, "<="))
        if bound is not None]
    if condition.one_of is not None:
        parts.append(f"{condition.arg} in {condition.one_of!r}")
    return " and ".join(parts)
