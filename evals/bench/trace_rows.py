"""Read the benchmarked cases back from the trace store (DuckDB views) as breakdown inputs."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from opsagent.agents.tracing.views import query, sql_list
from opsagent.evals.bench.breakdown import ActionRow, CallRow, CaseRow, CaseTrace, StatusRow
from opsagent.evals.bench.recording import EngineTiming


class RecordedCall(BaseModel):
    """A planner call as the trace keeps it, for re-issuing it to the engine (the floor)."""

    case_id: str
    step: int
    started_at: datetime
    finished_at: datetime
    prompt: list[dict[str, Any]]
    output: str
    completion_tokens: int


class RecordedTool(BaseModel):
    """A tool call the case executed, for re-issuing it to a fresh platform (the floor)."""

    case_id: str
    step: int
    tool: str
    args: dict[str, Any]
    dry_run: bool
    finished_at: datetime | None


def _rows(traces: Path | str, sql: str) -> list[dict[str, Any]]:
    cols, rows = query(traces, sql)
    return [dict(zip(cols, r, strict=True)) for r in rows]


def load_traces(traces: Path | str, case_ids: list[str],
                timings: list[EngineTiming] = ()) -> dict[str, CaseTrace]:
    """Case id -> its trace; planner calls are joined with the engine timings on case and start."""
    if not case_ids:
        return {}
    ids = sql_list(case_ids)
    out = {r["case_id"]: CaseTrace(case=CaseRow(**r)) for r in _rows(traces, f"""
        SELECT case_id, exception_type, status, received_at, finished_at FROM cases
        WHERE case_id IN {ids}""")}
    for r in _rows(traces, f"SELECT case_id, status, recorded_at FROM case_events WHERE case_id IN {ids}"):
        if r["case_id"] in out:
            out[r["case_id"]].statuses.append(StatusRow(**r))
    by_start = {(t.request_id.rsplit("-", 2)[0], t.started_at): t for t in timings}
    for r in _rows(traces, f"""
            SELECT case_id, step, started_at, finished_at, prompt_tokens, completion_tokens
            FROM planner_calls WHERE case_id IN {ids} ORDER BY started_at"""):
        t = by_start.get((r["case_id"], r["started_at"]))
        extra = {} if t is None else dict(first_token_at=t.first_token_at, queued_ms=t.queued_ms,
                                           cached_prompt_tokens=t.cached_prompt_tokens)
        if r["case_id"] in out:
            out[r["case_id"]].calls.append(CallRow(**r, **extra))
    for r in _rows(traces, f"""
            SELECT case_id, step, tool, decision, executed, writes, dry_run, error, started_at, finished_at
            FROM actions WHERE case_id IN {ids} ORDER BY started_at"""):
        if r["case_id"] in out:
            out[r["case_id"]].actions.append(ActionRow(**r))
    for r in _rows(traces, f"""
            SELECT case_id, count(*) AS n FROM approval_events WHERE case_id IN {ids} GROUP BY 1"""):
        if r["case_id"] in out:
            out[r["case_id"]].approvals = int(r["n"])
    return out


def recorded_calls(traces: Path | str, case_ids: list[str]) -> dict[str, list[RecordedCall]]:
    """Case id -> its planner calls with their prompts, in order."""
    out: dict[str, list[RecordedCall]] = {c: [] for c in case_ids}
    if not case_ids:
        return out
    for r in _rows(traces, f"""
            SELECT case_id, step, started_at, finished_at, prompt, output, completion_tokens
            FROM planner_calls WHERE case_id IN {sql_list(case_ids)} AND prompt IS NOT NULL
            ORDER BY started_at"""):
        r["prompt"] = json.loads(r["prompt"])
        out[r["case_id"]].append(RecordedCall(**r))
    return out


def recorded_tools(traces: Path | str, case_ids: list[str]) -> dict[str, list[RecordedTool]]:
    """Case id -> the tool calls it sent to a system (executed or dry run), in order."""
    out: dict[str, list[RecordedTool]] = {c: [] for c in case_ids}
    if not case_ids:
        return out
    for r in _rows(traces, f"""
            SELECT case_id, step, tool, args, dry_run, finished_at FROM actions
            WHERE case_id IN {sql_list(case_ids)} AND (executed OR dry_run) ORDER BY started_at"""):
        r["args"] = json.loads(r["args"]) if r["args"] else {}
        out[r["case_id"]].append(RecordedTool(**r))
    return out
