"""Canned reports over the trace views: the audit report and one case's timeline."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from opsagent.agents.tracing.report import UNSUPERVISED_HIGH_RISK
from opsagent.agents.tracing.views import connect, query, sql_string
from opsagent.cli_output import format_table
from opsagent.errors import CaseNotFound

HIGH_RISK_ACTIONS = """
SELECT a.case_id, a.step, a.tool, a.decision, a.executed, a.dry_run, p.approval_id,
       p.status AS approval, p.approver, p.decided_at, p.reason AS approver_reason, p.preview,
       a.args, a.started_at
FROM actions a
LEFT JOIN approvals p
  ON p.case_id = a.case_id AND p.step = a.step AND p.args_digest = a.args_digest
WHERE a.risk = 'high'
ORDER BY a.case_id, a.step, a.started_at
"""
"""Every high-risk action proposed, with the approval bound to exactly its arguments (if any)."""

UNSUPERVISED_HIGH_RISK_ROWS = """
SELECT a.case_id, a.step, a.tool, a.args, a.started_at FROM actions a
WHERE a.risk = 'high' AND a.executed AND NOT a.dry_run AND NOT EXISTS (
  SELECT 1 FROM approvals p
  WHERE p.case_id = a.case_id AND p.step = a.step AND p.status = 'approved'
    AND p.args_digest = a.args_digest)
ORDER BY a.started_at
"""
"""The rows `UNSUPERVISED_HIGH_RISK` counts: executed high-risk actions without a matching approval."""

PER_CLASS = """
WITH asked AS (SELECT DISTINCT case_id FROM approvals)
SELECT c.exception_type AS class, count(*) AS cases,
       count(*) FILTER (WHERE c.status = 'resolved' AND asked.case_id IS NULL) AS automated,
       count(*) FILTER (WHERE asked.case_id IS NOT NULL) AS with_approval,
       count(*) FILTER (WHERE c.status = 'escalated') AS escalated,
       count(*) FILTER (WHERE c.status = 'failed') AS failed,
       count(*) FILTER (WHERE c.status NOT IN ('resolved', 'escalated', 'failed', 'proposed')) AS open,
       round(100.0 * count(*) FILTER (WHERE c.status = 'resolved' AND asked.case_id IS NULL)
             / count(*), 1) AS automated_pct,
       round(100.0 * count(*) FILTER (WHERE c.status = 'escalated') / count(*), 1) AS escalated_pct,
       round(quantile_cont(epoch(c.finished_at - c.received_at), 0.5), 2) AS p50_s,
       round(quantile_cont(epoch(c.finished_at - c.received_at), 0.95), 2) AS p95_s
FROM cases c LEFT JOIN asked USING (case_id)
GROUP BY c.exception_type ORDER BY c.exception_type
"""
"""Per exception class: automated = resolved with no human approval asked; automated_pct over
every case received, open ones (not yet final) included and counted in `open`; latency = receipt
to final status, over finished cases."""

AUTOMATION = """
WITH asked AS (SELECT DISTINCT case_id FROM approvals)
SELECT count(*) AS cases,
       count(*) FILTER (WHERE c.status = 'resolved' AND asked.case_id IS NULL) AS automated,
       count(*) FILTER (WHERE c.status NOT IN ('resolved', 'escalated', 'failed', 'proposed')) AS open
FROM cases c LEFT JOIN asked USING (case_id)
"""
"""Every class together: the one definition of automation (see AUTOMATION_MEANING)."""

AUTOMATION_MEANING = ("automation = cases resolved with no approval asked, of every case received; "
                      "open cases (not yet final) count as not automated and are shown apart")
"""The one meaning of "automation" (console, audit, eval, README)."""


def audit(root: Path | str, *, preview_chars: int = 100) -> str:
    """High-risk actions with approval, approver and preview; the unsupervised-high-risk
    invariant with its count (and offending rows, if any); per-class automation, escalation and
    latency."""
    with closing(connect(root)) as con:  # one read of the store for every query of the report
        return _audit(con, preview_chars)


def _audit(con: duckdb.DuckDBPyConnection, preview_chars: int) -> str:
    parts = []
    columns, rows = query(con, HIGH_RISK_ACTIONS)
    shown = ["case_id", "step", "tool", "decision", "executed", "approval_id", "approval", "approver",
             "decided_at", "preview"]
    table = [tuple(_short(dict(zip(columns, r, strict=True))[c], preview_chars) for c in shown) for r in rows]
    parts.append(f"high-risk actions: {len(rows)}\n" + format_table(shown, table))
    (count,), = query(con, UNSUPERVISED_HIGH_RISK)[1]
    text = (f"unsupervised high-risk actions: {count} (executed high-risk actions without an "
            "approval of exactly their arguments; must be 0)")
    if count:
        text += "\n" + format_table(*_shorten(*query(con, UNSUPERVISED_HIGH_RISK_ROWS), preview_chars))
    parts.append(text)
    (cases, automated, still_open), = query(con, AUTOMATION)[1]
    parts.append(f"{automation_line(cases, automated, still_open)}\n({AUTOMATION_MEANING})\n"
                 "per class (latency = receipt to final status):\n" + format_table(*query(con, PER_CLASS)))
    return "\n\n".join(parts)


def automation_line(cases: int, automated: int, still_open: int) -> str:
    rate = f"{100 * automated / cases:.1f} %" if cases else "-"
    return f"automation: {rate} ({automated} of {cases} cases; {still_open} open)"


def audit_data(root: Path | str) -> dict[str, Any]:
    """The audit report as data (for `opsagent audit --json`)."""
    from opsagent.cli_output import rows_as_objects

    with closing(connect(root)) as con:
        (count,), = query(con, UNSUPERVISED_HIGH_RISK)[1]
        (cases, automated, still_open), = query(con, AUTOMATION)[1]
        return {
            "high_risk_actions": rows_as_objects(*query(con, HIGH_RISK_ACTIONS)),
            "unsupervised_high_risk": count,
            "unsupervised_high_risk_actions": rows_as_objects(*query(con, UNSUPERVISED_HIGH_RISK_ROWS)),
            "automation": {"cases": cases, "automated": automated, "open": still_open,
                           "rate": round(automated / cases, 4) if cases else None,
                           "meaning": AUTOMATION_MEANING},
            "per_class": rows_as_objects(*query(con, PER_CLASS)),
        }


def case_data(root: Path | str, case_id: str) -> dict[str, Any]:
    """One case's latest row and every record about it (for `opsagent case --json`)."""
    from opsagent.cli_output import rows_as_objects

    with closing(connect(root)) as con:
        case = rows_as_objects(*query(con, f"SELECT * FROM cases WHERE case_id = {sql_string(case_id)}"))
        if not case:
            raise CaseNotFound(f"no trace of case {case_id!r} under {root}")
        events = rows_as_objects(*query(con, f"""
            SELECT ts, kind, step, summary FROM events WHERE case_id = {sql_string(case_id)}
            ORDER BY ts, CASE kind WHEN 'planner' THEN 0 WHEN 'approval' THEN 1 WHEN 'action' THEN 2
                                     ELSE 3 END"""))
        return {"case": case[0], "events": events}


def case_timeline(root: Path | str, case_id: str, *, summary_chars: int = 160) -> str:
    """One case: its latest status and every record about it, in time order."""
    with closing(connect(root)) as con:
        return _timeline(con, root, case_id, summary_chars)


def _timeline(con: duckdb.DuckDBPyConnection, root: Path | str, case_id: str, summary_chars: int) -> str:
    columns, rows = query(con, f"SELECT * FROM cases WHERE case_id = {sql_string(case_id)}")
    if not rows:
        raise CaseNotFound(f"no trace of case {case_id!r} under {root}")
    case = dict(zip(columns, rows[0], strict=True))
    took = (f" ({(case['finished_at'] - case['received_at']).total_seconds():.1f} s)"
            if case["finished_at"] else "")
    head = [
        f"case {case_id}  {case['exception_type']}  {case['status']}"
        + (f": {case['reason']}" if case["reason"] else ""),
        f"received {_cell(case['received_at'])}, finished {_cell(case['finished_at']) or '-'}{took}",
        f"entities {case['entities']}",
        f"description {case['description']}",
    ]
    columns, rows = query(con, f"""
        SELECT ts, kind, step, summary FROM events WHERE case_id = {sql_string(case_id)}
        ORDER BY ts, CASE kind WHEN 'planner' THEN 0 WHEN 'approval' THEN 1 WHEN 'action' THEN 2
                                 ELSE 3 END""")
    return "\n".join(head) + "\n\n" + format_table(*_shorten(columns, rows, summary_chars))


def _shorten(columns: list[str], rows: list[tuple], chars: int) -> tuple[list[str], list[tuple]]:
    return columns, [tuple(_short(v, chars) for v in row) for row in rows]


def _short(value: Any, chars: int) -> Any:
    text = _cell(value)
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)

