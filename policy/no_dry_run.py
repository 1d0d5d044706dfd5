"""The no-dry-run rule: a write that its system cannot preview is high risk.

Held actions are shown to an approver with the system's own dry-run diff. A tool that writes
but offers no dry run (an MCP tool without the `dry_run` argument, an HTTP operation without
`?dry_run=true`) cannot be previewed, and nothing checks what it would change before it runs,
so it never runs on the planner's say-so: its risk is high whatever tier the policy file gives
it. `checks.risk_tier` applies this after the policy's own tier.

The same holds for a write that cannot be made idempotent (an MCP tool with no idempotency key
argument on a server not declared to honour `_meta` keys): a re-sent call might apply twice, so
the executor sends it at most once and it never runs without a human's approval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opsagent.tools.spec import ToolSpec


def no_dry_run_risk(spec: ToolSpec) -> str | None:
    """Why `spec` is high risk for want of a dry run, or None if it reads or can be previewed."""
    if spec.writes and not spec.supports_dry_run:
        return f"{spec.name} writes and {spec.system} offers no dry run to preview it"
    return None


def no_idempotency_risk(spec: ToolSpec) -> str | None:
    """Why `spec` is high risk for want of an idempotency key, or None."""
    if spec.writes and spec.idempotency is None:
        return f"{spec.name} writes and {spec.system} cannot apply it idempotently (no idempotency key)"
    return None
