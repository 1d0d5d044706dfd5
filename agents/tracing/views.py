"""The read side: DuckDB views over the Parquet trace folder.

Views: `case_events`, `actions`, `planner_calls`, `approval_events` (every row, one per event_id,
plus the `date` partition column), `cases`, `approvals` (the latest row per case_id /
approval_id) and `events` (every record of every table as one timeline: case_id, ts, kind, step,
summary, event_id).

The views live in `views.sql` next to this file, generated from the record classes
(`render_views_sql()`; a test checks the file is current and prints the command that rewrites it).
They read the folder named by the DuckDB variable `traces` when a query runs, so files written
later need nothing re-created; a table that had no files when the script ran reads as empty until
it runs again (DuckDB 1.x has no `read_parquet(allow_empty)`: the script picks, per table, a
statement over its files or an empty one). The script runs on the DuckDB 1.x CLI analysts use and
on DuckDB 2.0 (tests run both). Rows are deduplicated per `date, case_id, event_id`, so a filter
on the date or the case reaches the Parquet scan (files of other dates are not opened).
Analysts open it themselves with the DuckDB CLI (see the file's header); a long-lived reader
keeps one connection with `live.LiveViews`.

An S3 root (`s3://bucket/prefix`) is read without DuckDB's httpfs extension (which DuckDB would
download at run time): pyarrow reads every file of every table when the connection is made
(`date` from the folder name, columns an older file lacks as null) and registers them as
`_files_<table>`; the raw views select from those, the other views are the same. Such a
connection is a snapshot: `connect` again (`.reload` in the shell) to see newer files.
"""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from collections.abc import Iterable
from typing import Any

import duckdb
import pyarrow as pa

from opsagent.agents.tracing.compaction import merge
from opsagent.agents.tracing.records import RECORD_TYPES, SCHEMA_VERSION, ApprovalEvent, TraceEvent
from opsagent.agents.tracing.storage import TraceStore, is_remote, open_store
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
-- a query runs. With the DuckDB CLI (1.x, e.g. `pip install duckdb-cli`, or 2.0):
--   duckdb -init views.sql                                   # ./traces, from its parent folder
--   duckdb -cmd "SET VARIABLE traces = '/data/traces'" -cmd ".read views.sql"
--   D SET VARIABLE traces = '/data/other'; .read views.sql   -- switch folders
-- A table with no files when this script ran stays empty until it runs again (.read views.sql).
-- `opsagent traces views-sql` prints this file; `opsagent traces shell` opens a session with it.
-- A trace root in an S3 bucket: `opsagent traces sql|shell`, `opsagent audit` and `opsagent case`
-- take --traces s3://bucket/prefix and read it with pyarrow (no DuckDB extension needed). This
-- file reads a bucket only where DuckDB's httpfs extension is installed (DuckDB downloads it on
-- first use, so install it where the network allows), e.g. for an S3-compatible server:
--   D INSTALL httpfs; LOAD httpfs;
--   D CREATE SECRET (TYPE s3, KEY_ID '...', SECRET '...', REGION 'us-east-1',
--                    ENDPOINT 'minio.internal:9000', URL_STYLE 'path', USE_SSL false);
--   D SET VARIABLE traces = 's3://bucket/traces';
--   D .read views.sql
-- (on AWS itself, with the aws extension too: CREATE SECRET (TYPE s3, PROVIDER credential_chain)).
-- Rows are unique by event_id (a file and its compacted copy may briefly both exist); filters
-- on `date` or `case_id` reach the Parquet scan, so a date filter opens that date's files only.
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
    made absolute, or a URI such as s3://bucket/traces, without its ?options, for httpfs)."""
    location = str(root).split("?")[0] if "://" in str(root) else str(Path(root).resolve())
    return f"SET VARIABLE traces = {sql_string(location)};\n" + VIEWS_SQL.read_text()


def create_views(con: duckdb.DuckDBPyConnection, root: Path | str) -> None:
    """(Re)create the views on an open connection, over `root` (sets the variable `traces`).
    Over a local folder the views list it at every query: nothing needs re-creating when files
    appear. Over an S3 root they are a snapshot of the files there now (module docstring)."""
    if is_remote(root):
        _create_snapshot_views(con, open_store(root))
        return
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


def query(source: Path | str | duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one query over the trace views: (column names, rows). SQL errors raise TraceError.

    `source` is a trace root (a connection is opened and closed for this query) or a connection
    from `connect` (kept open: several queries then share one read of an object-store root).
    A file removed between DuckDB listing the folder and reading it (a compaction finishing)
    makes the query fail with an I/O error: it is run again, up to three times in all."""
    table = query_arrow(source, sql)
    if table is None:
        return [], []
    return table.column_names, list(zip(*(column.to_pylist() for column in table.columns), strict=True))


def query_arrow(source: Path | str | duckdb.DuckDBPyConnection, sql: str) -> pa.Table | None:
    """`query`'s result as an Arrow table (DuckDB's types kept); None for a statement without one."""
    owned = not isinstance(source, duckdb.DuckDBPyConnection)
    con = connect(source) if owned else source
    try:
        for attempt in range(3):
            try:
                relation = con.sql(sql)
                if relation is None:
                    return None
                return relation.arrow().read_all()
            except duckdb.IOException as err:
                if attempt == 2:
                    raise TraceError(str(err)) from err
                time.sleep(0.05)
            except duckdb.Error as err:
                raise TraceError(str(err)) from err
    finally:
        if owned:
            con.close()
    raise AssertionError("unreachable")


def _raw_view_sql(cls: type[TraceEvent], source: str | None = None) -> str:
    """Typed empty rows (so a table without files has its columns) unioned by name with the
    table's files; rows of files older than a column have it null; one row per event_id.
    `source` names a relation holding the files' rows instead (an S3 snapshot).

    The files are read through `query(getvariable('_<table>_files'))`, a statement chosen when
    the script runs (`_files_statement`): DuckDB 1.x has no `read_parquet(allow_empty)`. The
    dedupe partitions by `date, case_id, event_id` (event_id implies both), so filters on the
    date or the case pass the window and reach the Parquet scan."""
    view = _RAW_VIEW[cls.table]
    head = (f"CREATE OR REPLACE VIEW {view} AS\n"
            "SELECT * REPLACE (coalesce(schema_version, 1) AS schema_version) FROM (\n")
    tail = ("QUALIFY event_id IS NULL OR row_number() OVER (PARTITION BY date, case_id, event_id) = 1;")
    if source is not None:  # the snapshot already has every column of the record, typed
        return f"{head}  SELECT * FROM {source})\n{tail}"
    columns = ",\n    ".join(f'CAST(NULL AS {_sql_type(f.type)}) AS "{f.name}"' for f in cls.arrow_schema())
    return (
        _files_statement(cls) + "\n"
        + head
        + f"  (SELECT\n    {columns},\n    CAST(NULL AS DATE) AS \"date\"\n  LIMIT 0)\n"
        "  UNION ALL BY NAME\n"
        f"  SELECT * FROM query(getvariable('_{cls.table}_files')))\n"
        + tail
    )


def _files_statement(cls: type[TraceEvent]) -> str:
    """Sets `_<table>_files` to the statement that reads the table's files, or to an empty
    row set where the folder has none yet (run `.read views.sql` again once it has)."""
    pattern = f"getvariable('traces') || '/{cls.table}/*/*.parquet'"
    read = (f"SELECT * FROM read_parquet({pattern}, hive_partitioning = true, "
            "union_by_name = true, hive_types = {'date': DATE})")
    return (f"SET VARIABLE _{cls.table}_files = (SELECT CASE WHEN count(*) = 0\n"
            "  THEN 'SELECT CAST(NULL AS DATE) AS \"date\" LIMIT 0'\n"
            f"  ELSE {sql_string(read)} END\n"
            f"  FROM glob({pattern}));")


def _create_snapshot_views(con: duckdb.DuckDBPyConnection, store: TraceStore) -> None:
    """The views over an object store: every table read now with pyarrow, registered as
    `_files_<table>`, the raw views over those, then the same derived views as views.sql."""
    try:
        tables = {cls: read_table(store, cls) for cls in RECORD_TYPES}
    except (OSError, pa.ArrowException) as err:
        raise TraceError(f"cannot read the trace tables under {store.uri}: {err}") from err
    statements = [f"SET VARIABLE traces = {sql_string(store.uri)};"]
    for cls, table in tables.items():
        con.register(f"_files_{cls.table}", table)
        statements.append(_raw_view_sql(cls, f"_files_{cls.table}"))
    for view, (source, key, order) in _LATEST.items():
        statements.append(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {source}\n"
                          f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {order}) = 1;")
    statements.append(_EVENTS)
    try:
        con.execute("\n".join(statements))
    except duckdb.Error as err:
        raise TraceError(f"cannot create trace views over {store.uri}: {err}") from err


def read_table(store: TraceStore, cls: type[TraceEvent], *, attempts: int = 3) -> pa.Table:
    """Every row of the table of `cls` in `store`, with the `date` partition column; the record's
    columns come first (null where a file lacks them), then any a newer writer added. A file
    removed while it is read (a compaction finishing) makes the listing be taken again."""
    empty = cls.arrow_schema().empty_table().append_column(pa.field("date", pa.date32()), pa.array([], pa.date32()))
    attempt = 1
    while True:
        files = store.data_files(cls.table)
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:  # object stores answer in parallel
                parts = list(pool.map(lambda f: _with_date(store.read_parquet(f.path), f.date), files))
            return merge([empty, *parts])
        except FileNotFoundError:
            if attempt == attempts:
                raise
            attempt += 1


def _with_date(table: pa.Table, date: str) -> pa.Table:
    try:
        day = dt.date.fromisoformat(date)
    except ValueError as err:
        raise pa.ArrowInvalid(f"partition folder date={date} is not a date") from err
    return table.append_column(pa.field("date", pa.date32()), pa.array([day] * table.num_rows, pa.date32()))


def _sql_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ" if arrow_type.tz else "TIMESTAMP"
    names = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}
    if arrow_type not in names:
        raise TraceError(f"no DuckDB type for Arrow type {arrow_type}")
    return names[arrow_type]


def sql_string(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def sql_list(values: Iterable[str]) -> str:
    """`values` as a parenthesised list of SQL string literals, for `IN`."""
    return "(" + ",".join(map(sql_string, values)) + ")"
