"""The read side: DuckDB views over the Parquet trace folder.

Views: `case_events`, `actions`, `planner_calls`, `approval_events` (every row, plus the `date`
partition column) and `cases`, `approvals` (the latest row per case_id / approval_id).
A table with no files yet still has a view with the right columns, so queries on a fresh
folder work. Which tables have files is checked when the views are created: call
`create_views` again on a long-lived connection to pick up tables written since.

For an analyst's own DuckDB session, `views_sql(root)` returns the script that creates the views:
`duckdb -init <(python -c "from opsagent.agents.tracing import views_sql; print(views_sql('traces'))")`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from opsagent.agents.tracing.records import RECORD_TYPES, ApprovalEvent, TraceEvent
from opsagent.errors import TraceError

# Raw views are named after the table, except approvals: `approvals` is the latest state.
_RAW_VIEW = {t.table: t.table for t in RECORD_TYPES} | {ApprovalEvent.table: "approval_events"}

_LATEST = {
    "cases": ("case_events", "case_id", "recorded_at DESC, finished_at DESC NULLS LAST"),
    "approvals": ("approval_events", "approval_id", "recorded_at DESC, decided_at DESC NULLS LAST"),
}


def views_sql(root: Path | str) -> str:
    """The SQL script that creates every view over the trace folder at `root`."""
    root = Path(root).resolve()
    statements = [
        f"CREATE OR REPLACE VIEW {_RAW_VIEW[cls.table]} AS {_table_sql(root, cls)};" for cls in RECORD_TYPES
    ]
    for view, (source, key, order) in _LATEST.items():
        statements.append(
            f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {source} "
            f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {order}) = 1;"
        )
    return "\n".join(statements) + "\n"


def create_views(con: duckdb.DuckDBPyConnection, root: Path | str) -> None:
    """(Re)create the views on an open connection."""
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
    """Run one query over the trace views: (column names, rows). SQL errors raise TraceError."""
    con = connect(root)
    try:
        relation = con.sql(sql)
        if relation is None:
            return [], []
        table = relation.arrow().read_all()
    except duckdb.Error as err:
        raise TraceError(str(err)) from err
    finally:
        con.close()
    return table.column_names, list(zip(*(column.to_pylist() for column in table.columns), strict=True))


def _table_sql(root: Path, cls: type[TraceEvent]) -> str:
    """Typed empty rows, unioned by name with the table's files when there are any."""
    columns = [f'CAST(NULL AS {_sql_type(f.type)}) AS "{f.name}"' for f in cls.arrow_schema()]
    empty = f"SELECT {', '.join(columns)}, CAST(NULL AS DATE) AS \"date\" LIMIT 0"
    folder = root / cls.table
    if not any(folder.glob("*/*.parquet")):
        return empty
    pattern = _quote(f"{folder}/*/*.parquet")
    files = (
        f"SELECT * FROM read_parquet({pattern}, hive_partitioning = true, union_by_name = true, "
        "hive_types = {'date': DATE})"
    )
    return f"SELECT * FROM ({empty}) UNION ALL BY NAME {files}"


def _sql_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_timestamp(arrow_type):
        return "TIMESTAMPTZ" if arrow_type.tz else "TIMESTAMP"
    names = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}
    if arrow_type not in names:
        raise TraceError(f"no DuckDB type for Arrow type {arrow_type}")
    return names[arrow_type]


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"

