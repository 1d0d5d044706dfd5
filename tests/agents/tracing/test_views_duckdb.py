"""views.sql on the analysts' DuckDB (the 1.x CLI) and on DuckDB 2.0; filters that reach the
Parquet scan (EXPLAIN); one connection per reader, made again when files are published."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from opsagent.agents.tracing.live import LiveViews
from opsagent.agents.tracing.views import VIEWS_SQL
from opsagent.agents.tracing.writer import TraceWriter
from tests.agents.tracing.test_read_side import T0, _case, history

COUNTS = "SELECT (SELECT count(*) FROM cases), (SELECT count(*) FROM events), (SELECT count(*) FROM verdicts)"
"""C-1..C-4 and C-9; 17 records of day one plus C-9's; `verdicts` has no files (an empty table)."""
EXPECTED = (5, 18, 0)
DAY_TWO = "SELECT * FROM case_events WHERE date = DATE '2025-03-02'"
ONE_CASE = "SELECT * FROM events WHERE case_id = 'C-2'"


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace folder from the real writer: two dates of case_events, no verdicts."""
    root = tmp_path_factory.mktemp("views") / "traces"
    with TraceWriter(root) as writer:
        writer.export(history())
    with TraceWriter(root) as writer:
        writer.export([_case("C-9", "received", T0 + timedelta(days=1))])
    assert not (root / "verdicts").exists()
    return root


def duckdb_cli() -> Path:
    """The `duckdb` CLI from the duckdb-cli package, installed beside this Python (setup.sh)."""
    cli = Path(sys.executable).parent / "duckdb"
    if not cli.exists():
        found = shutil.which("duckdb")
        if found is None:
            reason = "no duckdb CLI: `pip install duckdb-cli==1.5.6` (scripts/setup.sh installs it)"
            if os.environ.get("CI", "").lower() in ("true", "1"):
                pytest.fail(reason)
            pytest.skip(reason)
        cli = Path(found)
    return cli


def cli(traces: Path, *statements: str) -> str:
    args = [str(duckdb_cli()), "-csv", "-noheader", "-cmd", f"SET VARIABLE traces = '{traces}'",
            "-cmd", f".read {VIEWS_SQL}"]
    for statement in statements:
        args += ["-c", statement]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr
    return done.stdout


def python_views(traces: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET VARIABLE traces = '{traces}'")
    con.execute(VIEWS_SQL.read_text())
    return con


def scans(con: duckdb.DuckDBPyConnection | Path, sql: str) -> list[dict]:
    """The Parquet scans of the plan of `sql` (their `extra_info`: Filters, Scanning Files...),
    from DuckDB 2.0 (a connection) or from the 1.x CLI over a trace folder (a path)."""
    explain = "EXPLAIN (FORMAT JSON) " + sql
    if isinstance(con, Path):
        out = cli(con, explain)
        text = out[out.index("\n[") + 1:]  # the CLI prints a banner box first
    else:
        text = con.sql(explain).fetchall()[0][1]
    found: list[dict] = []

    def walk(node: dict) -> None:
        if node["name"] == "READ_PARQUET":
            found.append(node["extra_info"])
        for child in node["children"]:
            walk(child)

    for root in json.loads(text):
        walk(root)
    return found


def filters(scan: dict) -> str:
    return str(scan.get("Filters", "")).replace(" ", "").removeprefix("(").removesuffix(")")


def test_the_cli_is_duckdb_1x() -> None:
    version = subprocess.run([str(duckdb_cli()), "--version"], capture_output=True, text=True).stdout
    assert version.startswith("v1."), version


def test_views_sql_runs_on_the_duckdb_1x_cli(traces: Path) -> None:
    out = cli(traces, COUNTS)
    assert tuple(int(v) for v in out.strip().split(",")) == EXPECTED


def test_views_sql_runs_on_duckdb_2(traces: Path) -> None:
    assert duckdb.__version__.startswith("2.")
    assert python_views(traces).sql(COUNTS).fetchall() == [EXPECTED]


def test_an_empty_folder_gives_empty_typed_views_on_both(tmp_path: Path) -> None:
    assert cli(tmp_path / "none", COUNTS).strip() == "0,0,0"
    con = python_views(tmp_path / "none")
    assert con.sql(COUNTS).fetchall() == [(0, 0, 0)]
    assert "case_id" in con.sql("SELECT * FROM actions").columns


def test_a_date_filter_opens_only_that_dates_files(traces: Path) -> None:
    for source in (python_views(traces), traces):
        (scan,) = scans(source, DAY_TWO)
        assert scan["Scanning Files"] == "1/2" and "2025-03-02" in scan["File Filters"], scan
    assert python_views(traces).sql(DAY_TWO).fetchall()[0][1] == "C-9"


def test_a_case_filter_reaches_every_scan(traces: Path) -> None:
    """Every Parquet scan left in the plan filters on the case (DuckDB may drop a table's scan
    altogether where the file's statistics rule the case out)."""
    for source in (python_views(traces), traces):
        found = scans(source, ONE_CASE)
        assert len(found) >= 2 and all(filters(s) == "case_id='C-2'" for s in found), found
    (scan,) = scans(python_views(traces), "SELECT * FROM cases WHERE case_id = 'C-2'")
    assert filters(scan) == "case_id='C-2'"


def test_the_old_dedupe_kept_the_filters_out(traces: Path) -> None:
    """The checks above can fail: partitioning by event_id alone hides date and case from the scan."""
    con = python_views(traces)
    con.execute(VIEWS_SQL.read_text().replace("PARTITION BY date, case_id, event_id", "PARTITION BY event_id"))
    (scan,) = scans(con, DAY_TWO)
    assert scan.get("Scanning Files", "2/2") == "2/2" and "File Filters" not in scan
    assert not any(filters(s) for s in scans(con, ONE_CASE))


def test_one_connection_is_reused_and_remade_when_files_are_published(tmp_path: Path) -> None:
    root = tmp_path / "traces"
    live = LiveViews(root)
    assert live.execute("SELECT count(*) FROM cases") == [(0,)]
    first = live.run(lambda con: con)
    assert live.execute("SELECT count(*) FROM cases") == [(0,)]
    assert live.run(lambda con: con) is first and live.refreshes == 1
    with TraceWriter(root) as writer:  # the first file of a table that was empty
        writer.export(history())
    assert live.execute("SELECT count(*) FROM cases") == [(4,)]
    assert live.run(lambda con: con) is first and live.refreshes == 2
    with TraceWriter(root) as writer:
        writer.export([_case("C-9", "received", T0 + timedelta(days=1))])
    assert live.execute("SELECT count(*) FROM cases") == [(5,)]
    assert live.refreshes == 3
    live.close()
