"""The autonomy gates' evidence read from the traces: one verdict per finished case (the rule that
weighs it: `policy/gates.py`, whose docstring says which verdict counts)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from opsagent.agents.case import CaseStatus
from opsagent.agents.tracing.views import query
from opsagent.policy.gates import CaseVerdict

FINAL = tuple(s.value for s in CaseStatus if s.final)
"""Statuses of a finished case (shadow mode's `proposed` included)."""

_EVIDENCE = f"""
WITH modes AS (
  SELECT case_id, arg_max(autonomy_mode, started_at) AS case_mode FROM actions
  WHERE autonomy_mode IS NOT NULL GROUP BY case_id),
explicit AS (
  SELECT case_id, correct, source FROM verdicts
  QUALIFY row_number() OVER (PARTITION BY case_id ORDER BY recorded_at DESC, event_id) = 1),
decided AS (
  SELECT case_id, bool_and(status = 'approved') AS correct FROM approvals
  WHERE status IN ('approved', 'rejected') GROUP BY case_id),
judged AS (
  SELECT c.case_id, c.exception_type, m.case_mode, c.received_at,
    CASE WHEN e.case_id IS NOT NULL THEN e.correct
         WHEN c.status = 'failed' THEN false
         WHEN m.case_mode = 'supervised' AND d.case_id IS NOT NULL THEN d.correct END AS correct,
    CASE WHEN e.case_id IS NOT NULL THEN e.source
         WHEN c.status = 'failed' THEN 'failed'
         WHEN m.case_mode = 'supervised' AND d.case_id IS NOT NULL THEN 'approvals' END AS source
  FROM cases c JOIN modes m USING (case_id)
  LEFT JOIN explicit e USING (case_id) LEFT JOIN decided d USING (case_id)
  WHERE c.status IN ({", ".join(f"'{s}'" for s in FINAL)}))
SELECT case_id, exception_type, case_mode, received_at, correct, source FROM judged
WHERE correct IS NOT NULL ORDER BY received_at, case_id
"""


def case_verdicts(traces: Path | str | duckdb.DuckDBPyConnection) -> list[CaseVerdict]:
    """Every finished case that has a verdict, oldest first (see `policy/gates.py`)."""
    names, rows = query(traces, _EVIDENCE)
    return [CaseVerdict(case_id=r[0], exception_type=r[1], mode=r[2], received_at=r[3], correct=r[4],
                        source=r[5]) for r in rows]
