"""Human-readable read side: SQL results as tables or CSV, and the demo's summary."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from opsagent.agents.tracing.views import query
from opsagent.cli_output import format_table

UNSUPERVISED_HIGH_RISK = """
SELECT count(*) FROM actions a
WHERE a.risk = 'high' AND a.executed AND NOT a.dry_run AND NOT EXISTS (
  SELECT 1 FROM approvals p
  WHERE p.case_id = a.case_id AND p.step = a.step AND p.status = 'approved'
    AND p.args_digest = a.args_digest)
"""


def print_query(root: Path | str, sql: str, *, csv: bool = False, as_json: bool = False,
                max_rows: int = 1000) -> int:
    """Print a query's result: a table drawn by DuckDB's own renderer (NULLs, small numbers,
    newlines and types as DuckDB shows them; as wide as the terminal, unbounded in a pipe),
    CSV with a header row, or JSON (a list of row objects)."""
    import shutil

    import duckdb

    from opsagent.agents.tracing.views import query_arrow
    from opsagent.cli_output import print_json

    table = query_arrow(root, sql)
    if table is None:
        return 0
    if as_json:
        return print_json(table.to_pylist())
    if csv:
        rows = list(zip(*(column.to_pylist() for column in table.columns), strict=True))
        sys.stdout.write(to_csv(table.column_names, rows))
        return 0
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 100_000
    with duckdb.connect() as con:
        con.from_arrow(table).show(max_rows=max_rows, max_width=width)
    sys.stdout.flush()
    return 0


def to_csv(columns: list[str], rows: list[tuple]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue()


def demo_summary(root: Path | str, case_ids: list[str]) -> str:
    """Cases by status, latency from receipt to last system-of-record update, planner usage."""
    ids = "(" + ",".join(f"'{c}'" for c in case_ids) + ")" if case_ids else "(NULL)"
    parts = []
    cols, rows = query(root, f"""
        SELECT status, count(*) AS cases FROM cases WHERE case_id IN {ids}
        GROUP BY status ORDER BY cases DESC""")
    parts.append(format_table(cols, rows))
    cols, rows = query(root, f"""
        WITH last_write AS (
          SELECT case_id, max(finished_at) AS at FROM actions
          WHERE executed AND writes AND NOT dry_run AND error IS NULL GROUP BY case_id)
        SELECT count(*) AS cases,
               round(quantile_cont(s, 0.5), 2) AS p50_s, round(quantile_cont(s, 0.95), 2) AS p95_s
        FROM (SELECT epoch(coalesce(w.at, c.finished_at) - c.received_at) AS s
              FROM cases c LEFT JOIN last_write w USING (case_id)
              WHERE c.case_id IN {ids} AND c.finished_at IS NOT NULL)""")
    parts.append("latency, receipt to last system-of-record update (or to the final status)\n"
                 + format_table(cols, rows))
    cols, rows = query(root, f"""
        SELECT count(*) AS planner_calls, sum(prompt_tokens) AS prompt_tokens,
               sum(completion_tokens) AS completion_tokens,
               round(sum(completion_tokens) / count(DISTINCT case_id), 1) AS out_tokens_per_case,
               CAST(median(duration_ms) AS BIGINT) AS p50_call_ms
        FROM planner_calls WHERE case_id IN {ids} AND decided_by IS DISTINCT FROM 'rule'""")
    parts.append("model calls (steps the playbook decided alone are not calls)\n" + format_table(cols, rows))
    (count,), = query(root, UNSUPERVISED_HIGH_RISK)[1]
    parts.append(f"unsupervised high-risk actions: {count}")
    return "\n\n".join(parts)
