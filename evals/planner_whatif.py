"""Planner what-if: re-run a traced case's decisions with another model, prompt or policy.

No system is touched: at every recorded step the planner is shown the case exactly as the trace
says the original agent saw it (the recorded tool results, teacher-forced), and its proposal is
compared with the recorded decision. Once a decision differs, later steps still use the recorded
history: what the new decision would have observed is unknowable without running it.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from opsagent.agents.planner import Planner
from opsagent.agents.step_schema import FINISH
from opsagent.agents.tracing.replay import CaseTrace, case_at, decisions
from opsagent.policy.records import canonical_json


class StepComparison(BaseModel):
    """One step: what the traced agent decided and what the planner under test proposes."""

    step: int
    recorded: dict[str, Any] = Field(description="{tool, args} or {tool: finish, status}.")
    proposed: dict[str, Any] | None = Field(description="The same shape; None if the output was unusable.")
    same: bool
    error: str | None = Field(None, description="Why the proposal was unusable.")
    model_called: bool = Field(description="False when the playbook decided without the model.")


class WhatIf(BaseModel):
    """A case's recorded decisions against a planner's proposals, step by step."""

    case_id: str
    exception_type: str
    model: str
    steps: list[StepComparison]

    @property
    def first_difference(self) -> int | None:
        return next((s.step for s in self.steps if not s.same), None)

    @property
    def agreement(self) -> float:
        return sum(s.same for s in self.steps) / len(self.steps) if self.steps else 1.0


def same_decision(recorded: dict[str, Any], proposed: dict[str, Any] | None,
                  key_args: list[str] | None = None) -> bool:
    """Same tool and, for an action, the same arguments (only `key_args` when given); for a
    finish, the same status."""
    if proposed is None or recorded["tool"] != proposed["tool"]:
        return False
    if recorded["tool"] == FINISH:
        return recorded.get("status") == proposed.get("status")
    want, got = recorded.get("args") or {}, proposed.get("args") or {}
    if key_args is not None:
        return all(k in got and canonical_json(got[k]) == canonical_json(want.get(k)) for k in key_args)
    return canonical_json(want) == canonical_json(got)


async def what_if(trace: CaseTrace, planner: Planner, allowed_tools: list[str],
                  expected: list[dict[str, Any]] | None = None) -> WhatIf:
    """Ask `planner` for every decision of `trace` (or of `expected`: the decisions it should make,
    each optionally with `key_args`) given the recorded history before it."""
    steps = []
    for want in expected if expected is not None else decisions(trace):
        turn = await planner.plan(case_at(trace, want["step"]), allowed_tools)
        proposed = None
        if turn.step is not None:
            proposed = ({"tool": FINISH, "status": turn.step.status} if turn.step.tool == FINISH
                        else {"tool": turn.step.tool, "args": turn.step.args})
        recorded = {k: v for k, v in want.items() if k in ("tool", "args", "status")}
        steps.append(StepComparison(
            step=want["step"], recorded=recorded, proposed=proposed, error=turn.error,
            same=same_decision(want, proposed, want.get("key_args")),
            model_called=turn.generation is not None))
    return WhatIf(case_id=trace.case_id, exception_type=trace.exception_type,
                  model=planner.engine.model, steps=steps)


def render_what_if(result: WhatIf) -> str:
    """One line per step: = for the same decision, ≠ for a different one."""
    lines = [f"what if {result.case_id} ({result.exception_type}) were planned by {result.model}:"]
    for s in result.steps:
        mark = "=" if s.same else "≠"
        lines.append(f"  {mark} step {s.step}: recorded {_label(s.recorded)}")
        if not s.same:
            lines.append(f"           proposed {_label(s.proposed) if s.proposed else 'nothing usable'}"
                         + (f" ({s.error})" if s.error else ""))
    first = result.first_difference
    lines.append(f"  {sum(s.same for s in result.steps)}/{len(result.steps)} decisions the same"
                 + (f"; first difference at step {first}" if first is not None else ""))
    return "\n".join(lines)


def _label(decision: dict[str, Any]) -> str:
    if decision["tool"] == FINISH:
        return f"finish {decision.get('status')}"
    return f"{decision['tool']} {json.dumps(decision.get('args') or {}, sort_keys=True, default=str)}"
