"""The trace commands of `opsagent`: `traces sql|shell|views-sql`, `audit`, `case CASE_ID`.

`cli.py` calls `add_parser(subparsers)` and, for a command in `COMMANDS`, `run(args)`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

COMMANDS = frozenset({"traces", "audit", "case"})
"""The top-level commands `add_parser` defines."""

_CANCEL = "\x03"  # Ctrl-C at the prompt

_SHELL_HELP = """\
End a statement with ';' (it may span lines). The views: cases, case_events, actions,
planner_calls, approvals, approval_events, events. Over a local folder they read its files at
each query, but a table with no files at the start reads empty until .reload; over an s3:// root
the views are a snapshot taken at the start (.reload takes a new one). Commands:
  .tables          the views
  .schema VIEW     a view's columns and types
  .mode table|csv  how results are printed (default table)
  .read FILE       run a SQL file
  .reload          make the views again (tables that got files; s3:// roots: new files)
  .help, .quit"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `traces`, `audit` and `case` to the `opsagent` parser's subcommands."""
    traces = subparsers.add_parser("traces", help="query the trace store")
    tsub = traces.add_subparsers(dest="traces_command", required=True)
    sql = tsub.add_parser("sql", help="run DuckDB SQL over the views cases, actions, approvals, ...")
    sql.add_argument("query", help="SQL, e.g. \"SELECT status, count(*) FROM cases GROUP BY 1\"")
    _traces_option(sql)
    form = sql.add_mutually_exclusive_group()
    form.add_argument("--csv", action="store_true", help="CSV with a header row")
    form.add_argument("--json", action="store_true", help="JSON: a list of row objects")
    sql.add_argument("--max-rows", type=int, default=1000, help="rows a table shows at most (default 1000)")
    shell = tsub.add_parser("shell", help="interactive SQL over the views (.help inside)")
    _traces_option(shell)
    views = tsub.add_parser("views-sql", help="print the SQL that creates the views, for your own DuckDB")
    views.add_argument("--traces", help="set the folder or s3:// URI in the script (default: ./traces)")

    audit = subparsers.add_parser(
        "audit", help="high-risk actions and their approvals, the unsupervised-high-risk count, "
                      "automation, escalation and latency per class")
    _traces_option(audit)
    audit.add_argument("--json", action="store_true", help="print JSON")
    case = subparsers.add_parser("case", help="one case's timeline from the traces")
    case.add_argument("case_id")
    _traces_option(case)
    case.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Run a command `add_parser` defined. Errors raise OpsAgentError (TraceError, CaseNotFound)."""
    from opsagent.cli_output import print_json

    if args.command == "audit":
        from opsagent.agents.tracing.audit import audit, audit_data

        if args.json:
            return print_json(audit_data(args.traces))
        print(audit(args.traces))
        return 0
    if args.command == "case":
        from opsagent.agents.tracing.audit import case_data, case_timeline

        if args.json:
            return print_json(case_data(args.traces, args.case_id))
        print(case_timeline(args.traces, args.case_id))
        return 0
    if args.traces_command == "sql":
        from opsagent.agents.tracing.report import print_query

        return print_query(args.traces, args.query, csv=args.csv, as_json=args.json, max_rows=args.max_rows)
    if args.traces_command == "views-sql":
        from opsagent.agents.tracing.views import VIEWS_SQL, views_sql

        sys.stdout.write(views_sql(args.traces) if args.traces else VIEWS_SQL.read_text())
        return 0
    if args.traces_command == "shell":
        return shell(args.traces)
    raise ValueError(f"not a trace command: {args.command} {getattr(args, 'traces_command', '')}")


def shell(root: Path | str, lines: Iterator[str] | None = None, out: TextIO | None = None) -> int:
    """A SQL session over the views: reads statements from the terminal (or `lines`)."""
    from opsagent.agents.tracing.storage import is_remote
    from opsagent.agents.tracing.views import connect

    out = out or sys.stdout
    interactive = lines is None and sys.stdin.isatty()
    if lines is None:
        lines = _terminal_lines() if interactive else iter(sys.stdin)
    con = connect(root)
    session = _Session(con, out, root)
    if interactive:
        where = str(root).split("?")[0] if is_remote(root) else Path(root).resolve()
        print(f"opsagent traces shell over {where}; .help for help", file=out)
    buffer: list[str] = []
    try:
        for line in lines:
            if line == _CANCEL:
                buffer = []
                continue
            if not buffer and line.strip().startswith("."):
                if not session.command(line.strip()):
                    break
                continue
            buffer.append(line)
            if "".join(buffer).rstrip().endswith(";"):
                session.run("".join(buffer))
                buffer = []
        if "".join(buffer).strip():
            session.run("".join(buffer))
    finally:
        con.close()
    return 0


class _Session:
    def __init__(self, con, out: TextIO, root: Path | str) -> None:
        self.con, self.out, self.mode, self.root = con, out, "table", root

    def run(self, sql: str, max_rows: int = 1000) -> None:
        import duckdb

        from opsagent.agents.tracing.report import to_csv
        from opsagent.cli_output import format_table

        try:
            relation = self.con.sql(sql)
            if relation is None:
                return
            columns = relation.columns
            rows = relation.limit(max_rows + 1).fetchall()
        except duckdb.Error as err:
            print(f"Error: {err}", file=self.out)
            return
        more = len(rows) > max_rows
        rows = rows[:max_rows]
        if self.mode == "csv":
            self.out.write(to_csv(columns, rows))
        else:
            print(format_table(columns, rows), file=self.out)
        print(f"({len(rows)} rows{', more not shown' if more else ''})", file=self.out)

    def command(self, line: str) -> bool:
        """A dot command; False to end the session."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in (".quit", ".exit"):
            return False
        if name == ".help":
            print(_SHELL_HELP, file=self.out)
        elif name == ".tables":
            self.run("SELECT view_name AS view FROM duckdb_views() WHERE NOT internal "
                     "AND NOT starts_with(view_name, '_') ORDER BY 1;")
        elif name == ".reload":
            from opsagent.agents.tracing.views import create_views
            from opsagent.errors import TraceError

            try:
                create_views(self.con, self.root)
            except TraceError as err:
                print(f"Error: {err}", file=self.out)
        elif name == ".schema" and arg:
            self.run(f'DESCRIBE "{arg}";')
        elif name == ".mode" and arg in ("table", "csv"):
            self.mode = arg
        elif name == ".read" and arg:
            try:
                self.run(Path(arg).read_text())
            except OSError as err:
                print(f"Error: {err}", file=self.out)
        else:
            print(f"Error: unknown command {line!r}; .help lists them", file=self.out)
        return True


def _terminal_lines() -> Iterator[str]:
    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:
        pass
    prompt = "traces> "
    while True:
        try:
            line = input(prompt)
        except EOFError:
            return
        except KeyboardInterrupt:  # drop the statement being typed
            print()
            prompt = "traces> "
            yield _CANCEL
            continue
        yield line + "\n"
        prompt = "traces> " if line.rstrip().endswith(";") or line.strip().startswith(".") else "   ...> "


def _traces_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--traces", default="traces",
                        help="trace folder or s3://bucket/prefix[?endpoint_override=host:port&scheme=http] "
                             "(default ./traces; S3 credentials from the AWS environment variables)")
