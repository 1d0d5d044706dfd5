"""What each exception class's planner sees: its allowed tools, where they come from, their risk
(`opsagent tools list`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opsagent.cli_output import format_table
from opsagent.errors import InputError
from opsagent.policy.config import PolicyConfig, RiskCondition, ToolPolicy, load_default_policy
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.no_dry_run import no_dry_run_risk
from opsagent.tools.building import build_registry
from opsagent.tools.platform.launcher import sandbox_registry
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.sources import load_sources
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


def run_list(args: argparse.Namespace) -> int:
    """`opsagent tools list` (its arguments: `tools/cli.py`): per class, the tools the planner sees."""
    policy = PolicyConfig.from_yaml(args.policy) if args.policy else load_default_policy()
    if args.exception_class and args.exception_class not in policy.classes:
        raise InputError(f"unknown exception class {args.exception_class!r}; the policy lists: "
                         f"{', '.join(sorted(policy.classes))}")
    registry = _registry(args.source, sandbox=not args.no_sandbox)
    engine = PolicyEngine(policy, registry)
    classes = [args.exception_class] if args.exception_class else sorted(policy.classes)
    rows = [(c, *row) for c in classes for row in class_tools(engine, c)]
    print(format_table(["class", "tool", "system", "source", "access", "risk", "dry_run"], rows))
    missing = [p for p in engine.problems() if not args.exception_class or p.startswith(f"{args.exception_class}:")]
    for problem in missing:
        print(f"note: {problem}", file=sys.stderr)
    return 0


def _registry(sources: list[Path], *, sandbox: bool) -> ToolRegistry:
    configs = [s for path in sources for s in load_sources(path)]
    base = None
    if sandbox:
        base = sandbox_registry()
    return build_registry(configs, base=base)
