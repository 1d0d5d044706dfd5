"""The read side: DuckDB views over the Parquet trace folder.

Views: `case_events`, `actions`, `planner_calls`, `approval_events` (every row, one per event_id,
plus the `date` partition column), `cases`, `approvals` (the latest row per case_id /
approval_id) and `events` (every record of every table as one timeline: case_id, ts, kind, step,
summary, event_id).

The views live in `views.sql` next to this file, generated from the record classes
(`render_views_sql()`; a test checks the file is current and prints the command that rewrites it).
They read the folder named by the DuckDB variable `traces` when a query runs, so files written
later, and tables with no files yet, need nothing re-created. Analysts open it themselves with
the DuckDB CLI (see the file's header).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from opsagent.agents.tracing.records import RECORD_TYPES, SCHEMA_VERSION, ApprovalEvent, TraceEvent
from opsagent.errors import TraceError

VIEWS_SQL = Path(__file__).with_name("views.sql")
"""The analysts' script: creates every view over the folder in the variable `traces`."""

# Raw views are named after the table, except approvals: `approvals` is the latest state.
_RAW_VIEW = {t.table: t.table for t in RECORD_TYPES} | {ApprovalEvent.table: "approval_events"}

_LATEST = {
    "cases": ("case_events", "case_id", "recorded_at DESC, finished_at DESC NULLS LAST"),
    "approvals": ("approval_events", "approval_id", "recorded_at DESC, decided_at DESC NULLS LAST"),
}

_HEADER = f"""\
-- opsagent trace views, schema version {SCHEMA_VERSION} (see SCHEMA.md). Generated from the record
-- classes in agents/tracing/records.py by views.render_views_sql(): do not edit by hand.
--
-- The views read the trace folder named by the variable `traces` (default: ./traces) each time
-- a query runs. With the DuckDB CLI (DuckDB 2.0, as opsagent uses):
--   duckdb -init views.sql                                   # ./traces, from its parent folder
--   duckdb -cmd "SET VARIABLE traces = '/data/traces'" -cmd ".read views.sql"
--   D SET VARIABLE traces = '/data/other';                   -- switch folders at any time
-- `opsagent traces views-sql` prints this file; `opsagent traces shell` opens a session with it.
-- An S3 root works where DuckDB's httpfs extension is installed and credentials are set
-- (CREATE SECRET ... (TYPE s3, ...)): SET VARIABLE traces = 's3://bucket/traces';
-- Rows are unique by event_id: a file and its compacted copy may briefly both exist.
"""

_EVENTS = """\
CREATE OR REPLACE VIEW events AS
SELECT case_id, recorded_at AS ts, 'status' AS kind, CAST(NULL AS BIGINT) AS step,
       status || coalesce(': ' || reason, '') AS summary, event_id
FROM case_events
UNION ALL
SELECT case_id, started_at, 'planner', step,
       model || ', ' || prompt_tokens || '+' || completion_tokens || ' tokens, '
       || CAST(round(duration_ms) AS BIGINT) || ' ms: ' || output, event_id
FROM planner_calls
UNION ALL
SELECT case_id, started_at, 'action', step,
       tool || ' ' || args || ' -> ' || decision || coalesce(' (' || risk || ' risk)', '')
       || CASE WHEN dry_run THEN ', dry run' WHEN executed THEN ', executed'
               ELSE ', not executed' END
       || coalesce(', error: ' || error, '') || coalesce(', result: ' || result, ''), event_id
FROM actions
UNION ALL
SELECT case_id, recorded_at, 'approval', step,
       approval_id || ' ' || status || ': ' || tool || coalesce(' by ' || approver, '')
       || coalesce(' (' || reason || ')', ''), event_id
FROM approval_events;
"""


def render_views_sql() -> str:
    """The text of `views.sql`, from the record classes."""
    statements = [_HEADER, "SET VARIABLE traces = coalesce(getvariable('traces'), 'traces');", ""]
    for cls in RECORD_TYPES:
        statements += [_raw_view_sql(cls), ""]
    for view, (source, key, order) in _LATEST.items():
        statements += [
            f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {source}\n"
            f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {order}) = 1;", ""]
    statements.append(_EVENTS)
    return "\n".join(statements)


def views_sql(root: Path | str) -> str:
    """The SQL script that creates every view over the trace folder at `root` (a local folder,
    made absolute, or a URI such as s3://bucket/traces, left as it is)."""
    location = str(root) if "://" in str(root) else str(Path(root).resolve())
    return f"SET VARIABLE traces = {_quote(location)};\n" + VIEWS_SQL.read_text()


def create_views(con: duckdb.DuckDBPyConnection, root: Path | str) -> None:
    """(Re)create the views on an open connection, over `root` (sets the variable `traces`).
    The views list the folder at every query: nothing needs re-creating when files appear."""
    try:
        con.execute(views_sql(root))
    except duckdb.Error as err:
        raise TraceError(f"cannot create trace views over {root}: {err}") from err


def connect(root: Path | str) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection (TimeZone UTC) with the trace views over `root`."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        create_views(con, root)
    except BaseException:
        con.close()
        raise
    return con


def query(root: Path | str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one query over the trace views: (column names, rows). SQL errors raise TraceError.

    A file removed between DuckDB listing the folder and reading it (a compaction finishing)
    makes the query fail with an I/O error: it is run again, up to three times in all."""
    con = connect(root)
    try:
        for attempt in range(3):
            try:
                relation = con.sql(sql)
                if relation is None:
                    return [], []
                table = relation.arrow().read_all()
                break
            except duckdb.IOException as err:
                if attempt == 2:
                    raise TraceError(str(err)) from err
                time.sleep(0.05)
            except duckdb.Error as err:
                raise TraceError(str(err)) from err
    finally:
        con.close()
    return table.column_names, list(zip(*(column.to_pylist() for column in table.columns), strict=True))


def _raw_view_sql(cls: type[TraceEvent]) -> str:
    """Typed empty rows (so a table without files has its columns) unioned by name with the
    table's files; rows of files older than a column have it null; one row per event_id."""
    columns = ",\n      ".join(f'CAST(NULL AS {_sql_type(f.type)}) AS "{f.name}"' for f in cls.arrow_schema())
    return (
        f"CREATE OR REPLACE VIEW {_RAW_VIEW[cls.table]} AS\n"
        "SELECT * REPLACE (coalesce(schema_version, 1) AS schema_version) FROM (\n"
        "  -- with no files, read_parquet(allow_empty) yields one column named 'empty': drop it\n"
        "  SELECT COLUMNS(lambda c: c <> 'empty') FROM (\n"
        f"    (SELECT\n      {columns},\n      CAST(NULL AS DATE) AS \"date\"\n    LIMIT 0)\n"
        "    UNION ALL BY NAME\n"
        f"    SELECT * FROM read_parquet(getvariable('traces') || '/{cls.table}/*/*.parquet',\n"
        "      hive_partitioning = true, union_by_name = true, hive_types = {'date': DATE},\n"
        "      allow_empty = true)))\n"
        "QUALIFY event_id IS NULL OR row_number() OVER (PARTITION BY event_id) = 1;"
    )


def _sql_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ" if arrow_type.tz else "TIMESTAMP"
    names = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}
    if arrow_type not in names:
        raise TraceError(f"no DuckDB type for Arrow type {arrow_type}")
    return names[arrow_type]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
