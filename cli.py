"""`opsagent`: the command line. Subcommands import their heavy parts lazily."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opsagent.errors import OpsAgentError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opsagent", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="resolve injected weight-mismatch exceptions end to end")
    demo.add_argument("--cases", type=int, default=20, help="how many exceptions (default 20)")
    demo.add_argument("--traces", type=Path, default=Path("traces"), help="trace folder")
    demo.add_argument("--seed", type=int, default=7, help="seed of the injected exceptions")
    demo.add_argument("--config", type=Path, help="system config YAML (default: embedded model)")
    demo.add_argument("--port", type=int, default=0, help="Serve HTTP port (default: a free one)")
    demo.add_argument("--timeout", type=float, default=900, help="seconds to wait for the cases")

    traces = sub.add_parser("traces", help="query the trace store")
    tsub = traces.add_subparsers(dest="traces_command", required=True)
    sql = tsub.add_parser("sql", help="run DuckDB SQL over the views cases, actions, approvals, ...")
    sql.add_argument("query", help="SQL, e.g. \"SELECT status, count(*) FROM cases GROUP BY 1\"")
    sql.add_argument("--traces", type=Path, default=Path("traces"), help="trace folder")
    sql.add_argument("--csv", action="store_true", help="CSV with a header row")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from opsagent.cluster.demo import run_demo

            return run_demo(cases=args.cases, traces=args.traces, seed=args.seed,
                            config_path=args.config, port=args.port, timeout_s=args.timeout)
        if args.command == "traces" and args.traces_command == "sql":
            from opsagent.agents.tracing.report import print_query

            return print_query(args.traces, args.query, csv=args.csv)
    except OpsAgentError as exc:
        print(f"opsagent: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
