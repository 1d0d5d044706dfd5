"""Replay one traced case: what the agent saw and decided at each step, from the trace store alone.

`load_case_trace` reads a case's rows from every table; `steps_of` rebuilds the case's steps as the
runner held them (the history a planner is shown); `render_replay` prints the step-by-step account
(prompt, model output, policy decision, tool result, approval) for `opsagent replay CASE_ID`.
"""

from __future__ import annotations

import json
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
from pydantic import BaseModel, Field

from opsagent.agents.case import Case, CaseStatus, ExceptionReport, Step
from opsagent.agents.tracing.views import connect, query, sql_string
from opsagent.errors import CaseNotFound, TraceError

_JSON_COLUMNS = {"entities", "args", "reasons", "limits", "result", "preview", "prompt"}


class CaseTrace(BaseModel):
    """Every traced row of one case, oldest first, JSON columns decoded."""

    model_config = {"extra": "forbid"}
    case_id: str
    exception_type: str
    description: str
    entities: dict[str, str]
    status: str = Field(description="The case's latest status.")
    reason: str | None = None
    received_at: datetime
    finished_at: datetime | None = None
    planner_calls: list[dict[str, Any]] = Field(default_factory=list)
    actions: list[dict[str, Any]] = Field(default_factory=list)
    approvals: list[dict[str, Any]] = Field(default_factory=list, description="Latest row per approval.")

    @property
    def report(self) -> ExceptionReport:
        return ExceptionReport(exception_type=self.exception_type, description=self.description,
                               entities=self.entities)

    def planned(self, step: int) -> dict[str, Any] | None:
        """The parsed model output that proposed `step` (the last usable one), or None."""
        for call in reversed(self.planner_calls):
            if call["step"] == step and (parsed := _parse(call["output"])) is not None:
                return parsed
        return None


def load_case_trace(root: Path | str, case_id: str,
                    con: duckdb.DuckDBPyConnection | None = None) -> CaseTrace:
    """All of `case_id`'s rows under the trace root (read through `con`, a connection already
    open on it, when given); CaseNotFound if it has none."""
    if con is not None:
        return _load(con, root, case_id)
    with closing(connect(root)) as opened:  # one read of the store for the four queries
        return _load(opened, root, case_id)


def _load(con: duckdb.DuckDBPyConnection, root: Path | str, case_id: str) -> CaseTrace:
    case = _rows(con, "SELECT * FROM cases WHERE case_id = ?", case_id)
    if not case:
        raise CaseNotFound(f"no case {case_id!r} in the traces at {root}")
    row = case[0]
    return CaseTrace(
        case_id=case_id, exception_type=row["exception_type"], description=row["description"],
        entities=row["entities"] or {}, status=row["status"], reason=row["reason"],
        received_at=row["received_at"], finished_at=row["finished_at"],
        planner_calls=_rows(con, "SELECT * FROM planner_calls WHERE case_id = ? "
                                  "ORDER BY started_at, step", case_id),
        actions=_rows(con, "SELECT * FROM actions WHERE case_id = ? ORDER BY started_at, step", case_id),
        approvals=_rows(con, "SELECT * FROM approvals WHERE case_id = ? ORDER BY requested_at", case_id),
    )


def steps_of(trace: CaseTrace) -> list[Step]:
    """The case's steps as the runner last held them: for each step its latest action row (an
    approved action has a held row and an executed one), the evidence the model gave, and for a
    rejected or expired approval the error the planner was told."""
    latest: dict[int, dict[str, Any]] = {}
    for row in trace.actions:
        latest[row["step"]] = row
    approvals = {a["step"]: a for a in trace.approvals}
    steps = []
    for number in sorted(latest):
        row = latest[number]
        planned = trace.planned(number) or {}
        step = Step(step=number, tool=row["tool"], args=row["args"] or {},
                    evidence=planned.get("evidence") or {}, verdict=row["decision"], risk=row["risk"],
                    reasons=row["reasons"] or [], executed=row["executed"],
                    ok=(row["error"] is None) if row["executed"] or row["decision"] == "propose" else None,
                    result=row["result"], error=row["error"])
        approval = approvals.get(number)
        if approval is not None:
            step.approval_id = approval["approval_id"]
            if approval["status"] in ("rejected", "expired") and not row["executed"]:
                step.error = (f"{approval['status']} by {approval['approver'] or 'nobody'}: "
                              f"{approval['reason']}")
        steps.append(step)
    return steps


def case_at(trace: CaseTrace, step: int) -> Case:
    """The case as the planner saw it before proposing `step`: the steps before it, recorded."""
    history = [s for s in steps_of(trace) if s.step < step]
    return Case(case_id=trace.case_id, report=trace.report, status=CaseStatus.planning, steps=history,
                received_at=trace.received_at)


def decisions(trace: CaseTrace) -> list[dict[str, Any]]:
    """What the agent decided at each step: {step, tool, args} per action, then the finish
    ({tool: "finish", status}) if the case ended by the planner's or playbook's word."""
    out = [{"step": s.step, "tool": s.tool, "args": s.args} for s in steps_of(trace)]
    if trace.status in (CaseStatus.resolved, CaseStatus.escalated):
        last = trace.planned(len(out) + 1)
        if last is None or last.get("tool") == "finish":
            out.append({"step": len(out) + 1, "tool": "finish", "status": trace.status})
    return out


def render_replay(trace: CaseTrace, *, full_prompt: bool = False, width: int = 400) -> str:
    """The step-by-step account of a case: prompt, model output, policy decision, tool result."""
    lines = [f"case {trace.case_id} ({trace.exception_type}): {trace.status}"
             + (f": {trace.reason}" if trace.reason else ""),
             f"  received {trace.received_at:%Y-%m-%d %H:%M:%S}"
             + (f", finished {trace.finished_at:%H:%M:%S}" if trace.finished_at else ""),
             f"  description: {trace.description}",
             f"  entities: {_json(trace.entities)}"]
    calls: dict[int, list[dict]] = {}
    for call in trace.planner_calls:
        calls.setdefault(call["step"], []).append(call)
    acts: dict[int, list[dict]] = {}
    for row in trace.actions:
        acts.setdefault(row["step"], []).append(row)
    approvals = {a["step"]: a for a in trace.approvals}
    for number in sorted(set(calls) | set(acts)):
        lines.append(f"\nstep {number}")
        for call in calls.get(number, []):
            lines += _prompt_lines(call.get("prompt"), full_prompt, width)
            lines.append(f"  model    {call['model']}, {call['prompt_tokens']}+{call['completion_tokens']} "
                         f"tokens, {call['duration_ms'] / 1000:.2f} s, {call['finish_reason']}")
            lines.append(f"  output   {_cut(call['output'], width)}")
        if number not in acts and number not in calls:
            continue
        for row in acts.get(number, []):
            risk = f" ({row['risk']} risk)" if row["risk"] else ""
            lines.append(f"  policy   {row['decision']}{risk}: {'; '.join(row['reasons'] or []) or '-'}"
                         f" [policy {str(row['policy_version'])[:12]}]")
            state = "dry run" if row["dry_run"] else "executed" if row["executed"] else "not executed"
            lines.append(f"  tool     {row['tool']} {_cut(_json(row['args']), width)} -> {state}")
            if row["error"]:
                lines.append(f"  error    {_cut(row['error'], width)}")
            if row["result"] is not None:
                lines.append(f"  result   {_cut(_json(row['result']), width)}")
        if (approval := approvals.get(number)) is not None:
            who = f" by {approval['approver']}" if approval["approver"] else ""
            why = f": {approval['reason']}" if approval["reason"] else ""
            lines.append(f"  approval {approval['approval_id']} {approval['status']}{who}{why}")
    if trace.status in (CaseStatus.resolved, CaseStatus.escalated, CaseStatus.failed):
        lines.append(f"\nend      {trace.status}: {trace.reason or '-'}")
    return "\n".join(lines)


def _prompt_lines(prompt: list[dict] | None, full: bool, width: int) -> list[str]:
    if not prompt:
        return ["  prompt   (not recorded: traces before schema version 4)"]
    if full:
        return [f"  prompt   [{m['role']}]\n{m['content']}" for m in prompt]
    size = sum(len(m["content"]) for m in prompt)
    last = prompt[-1]
    return [f"  prompt   {len(prompt)} messages, {size:,} chars; last ({last['role']}): "
            f"{_cut(last['content'], width)}"]


def _rows(con: duckdb.DuckDBPyConnection, sql: str, case_id: str) -> list[dict[str, Any]]:
    safe = sql.replace("?", sql_string(case_id))
    names, rows = query(con, safe)
    out = []
    for row in rows:
        record = dict(zip(names, row, strict=True))
        for name in _JSON_COLUMNS & record.keys():
            if isinstance(record[name], str):
                try:
                    record[name] = json.loads(record[name])
                except ValueError as err:
                    raise TraceError(f"{name} of a {case_id} row is not JSON: {err}") from err
        out.append(record)
    return out


def _parse(output: str) -> dict[str, Any] | None:
    try:
        value = json.loads(output)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _cut(text: str, width: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."
