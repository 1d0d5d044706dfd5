"""Policy what-if over history: what a new policy would have decided on every traced action.

Every distinct proposal in the trace store (one per case, step and exact arguments) goes through a
`PolicyEngine` built from the new policy, in the order it was proposed, with the clock set to when
it was proposed and the observations the case had then. Spending and rate limits count against a
fresh in-memory ledger fed with what history executed, so a tighter budget shows where it would
have started to bite. Nothing is executed and no durable counter or approval is touched.
Each proposal is decided in the autonomy mode it was decided in then (`actions.autonomy_mode`; a
policy file holds no modes); traces older than modes count as autonomous.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from opsagent.agents.tracing.views import query
from opsagent.cli_output import format_table
from opsagent.policy.config import PolicyConfig
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.ledger import SpendLedger
from opsagent.policy.modes import Mode
from opsagent.policy.records import ToolCallRequest
from opsagent.tools.registry import ToolRegistry

HISTORY = """
SELECT a.case_id, a.step, a.tool, a.args, a.args_digest, a.decision, a.risk, a.executed, a.dry_run,
       a.error, a.result, a.started_at, a.autonomy_mode, c.exception_type, c.entities,
       EXISTS (SELECT 1 FROM approvals p WHERE p.case_id = a.case_id AND p.step = a.step
               AND p.args_digest = a.args_digest AND p.status = 'approved') AS approved
FROM actions a JOIN cases c USING (case_id)
{where}
ORDER BY a.started_at, a.case_id, a.step
"""


class ReplayedAction(BaseModel):
    """One traced proposal, what was decided then and what the new policy decides."""

    case_id: str
    exception_type: str
    step: int
    tool: str
    args: dict[str, Any]
    proposed_at: datetime
    executed: bool = Field(description="Whether history executed it (after approval, if it was held).")
    approved: bool = Field(description="Whether a human approved exactly these arguments.")
    was: str = Field(description="The recorded verdict on the proposal.")
    was_risk: str | None
    now: str = Field(description="The new policy's verdict.")
    now_risk: str | None
    reasons: list[str] = Field(description="The new policy's reasons, deciding one first.")

    @property
    def changed(self) -> bool:
        return (self.was, self.was_risk) != (self.now, self.now_risk)


def policy_what_if(root: Path | str, config: PolicyConfig, registry: ToolRegistry, *,
                   since: datetime | None = None) -> list[ReplayedAction]:
    """Replay every traced proposal (since `since`) through `config`, oldest first."""
    where = f"WHERE a.started_at >= '{since.isoformat()}'" if since is not None else ""
    names, rows = query(root, HISTORY.format(where=where))
    now = [0.0]
    modes = _RecordedMode()
    engine = PolicyEngine(config, registry, ledger=SpendLedger(), clock=lambda: now[0], autonomy=modes)
    seen: dict[tuple[str, int, str], dict[str, Any]] = {}
    for values in rows:  # one proposal per case, step and digest: held then executed is one
        row = dict(zip(names, values, strict=True))
        key = (row["case_id"], row["step"], row["args_digest"])
        if key in seen:
            seen[key]["executed"] |= row["executed"] and not row["dry_run"]
            seen[key]["rows"].append(row)
        else:
            seen[key] = {**row, "executed": row["executed"] and not row["dry_run"], "rows": [row]}
    observations: dict[str, dict[str, Any]] = {}
    out = []
    for row in seen.values():
        args, entities = _json(row["args"]) or {}, _json(row["entities"]) or {}
        request = ToolCallRequest(case_id=row["case_id"], exception_type=row["exception_type"],
                                  step=row["step"], tool=row["tool"], args=args, entities=entities,
                                  observations=dict(observations.get(row["case_id"], {})))
        now[0] = row["started_at"].timestamp()
        modes.current = Mode(row["autonomy_mode"] or Mode.autonomous)
        decision = counted = engine.authorize(request)
        if decision.verdict == "require_approval" and row["executed"]:  # approved again, as before:
            counted = engine.authorize(request, approved_digest=decision.args_digest,  # its spend counts
                                       approved_by="history")
        if counted.permit is not None:
            engine.settle(counted.permit, executed=row["executed"])
        for done in row["rows"]:
            if done["executed"] and not done["dry_run"] and done["error"] is None:
                observations.setdefault(row["case_id"], {})[row["tool"]] = _json(done["result"])
        first = row["rows"][0]
        out.append(ReplayedAction(
            case_id=row["case_id"], exception_type=row["exception_type"], step=row["step"],
            tool=row["tool"], args=args, proposed_at=row["started_at"], executed=row["executed"],
            approved=row["approved"], was=first["decision"], was_risk=first["risk"],
            now=decision.verdict, now_risk=decision.risk, reasons=decision.reasons))
    return out


def render_policy_what_if(replayed: list[ReplayedAction], *, limit: int = 50) -> str:
    """A count of verdict changes and the changed actions, newest policy's view."""
    if not replayed:
        return "no traced actions to replay"
    changes = Counter((r.was, r.now) for r in replayed if r.changed)
    lines = [f"{len(replayed)} traced proposals replayed; {sum(changes.values())} decided differently"]
    for (was, now), n in sorted(changes.items()):
        lines.append(f"  {was} -> {now}: {n}")
    executed_now_held = [r for r in replayed if r.executed and not r.approved and r.now != "allow"]
    lines.append(f"executed without approval then, held or denied now: {len(executed_now_held)}")
    changed = [r for r in replayed if r.changed][:limit]
    if changed:
        lines.append(format_table(
            ["case_id", "step", "tool", "was", "now", "executed", "reason"],
            [(r.case_id, r.step, r.tool, f"{r.was} ({r.was_risk or '-'})", f"{r.now} ({r.now_risk or '-'})",
              r.executed, (r.reasons or ["-"])[0][:80]) for r in changed]))
    return "\n".join(lines)


class _RecordedMode:
    """The mode of the proposal being replayed, whatever the class (see the module docstring)."""

    current = Mode.autonomous

    def mode(self, exception_type: str, initial: Mode | str | None = None) -> Mode:
        return self.current


def _json(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) else text
