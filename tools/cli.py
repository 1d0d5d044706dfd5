"""`opsagent tools`: import a client's OpenAPI document as a tool source; list what each
exception class's planner sees.

`cli.py` calls `add_parser(subparsers)` and, for the `tools` command, `run(args)` (`tools import`)
or `policy.catalog.run_list(args)` (`tools list`: it needs the policy, a floor above tools).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opsagent.cli_output import format_table
from opsagent.errors import InputError, ToolError

COMMAND = "tools"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add `tools list` and `tools import openapi` to the `opsagent` parser's subcommands."""
    tools = subparsers.add_parser(COMMAND, help="tool sources (OpenAPI, MCP) and what each class may use")
    sub = tools.add_subparsers(dest="tools_command", required=True)

    listing = sub.add_parser("list", help="per exception class, the tools the planner sees, with their risk")
    listing.add_argument("--class", dest="exception_class", help="only this exception class")
    listing.add_argument("--policy", type=Path, help="policy YAML (default: the shipped policy)")
    listing.add_argument("--source", type=Path, action="append", default=[],
                         help="a tool-source YAML (from `tools import`, or an MCP server's); repeatable")
    listing.add_argument("--no-sandbox", action="store_true",
                         help="leave out the sandbox platform's tools (default: started briefly to read them)")

    imports = sub.add_parser("import", help="turn a client's API description into a tool-source config")
    isub = imports.add_subparsers(dest="import_kind", required=True)
    openapi = isub.add_parser("openapi", help="an OpenAPI 3 document: one tool per operation")
    openapi.add_argument("spec", help="the document: a file path or an http(s) URL")
    openapi.add_argument("--name", required=True, help="the system name its tools are registered under")
    openapi.add_argument("--base-url", required=True, help="where calls go, e.g. https://erp.example/api")
    openapi.add_argument("--out", type=Path, help="write the config here (default: print it)")
    openapi.add_argument("--auth-header", default="Authorization", help="auth header name (default Authorization)")
    openapi.add_argument("--auth-scheme", help="put before the value, e.g. Bearer")
    secret = openapi.add_mutually_exclusive_group()
    secret.add_argument("--auth-env", help="the environment variable holding the header's value")
    secret.add_argument("--auth-secret", help="the key of the value in the $OPSAGENT_SECRETS file")
    openapi.add_argument("--timeout", type=float, help="seconds per request (default: the executor's)")
    openapi.add_argument("--retries", type=int, default=2,
                         help="extra attempts on a transport failure or 429/500/502/503/504 (default 2; "
                              "writes only with an idempotency key)")
    openapi.add_argument("--no-embed", action="store_true",
                         help="keep the document's location instead of embedding the document")
    for flag, text in (("--read", "mark this operationId a read (e.g. a POST search)"),
                       ("--write", "mark this operationId a write"),
                       ("--exclude", "leave this operationId out")):
        openapi.add_argument(flag, action="append", default=[], metavar="OPERATION_ID", help=text + "; repeatable")


def run(args: argparse.Namespace) -> int:
    """`tools import openapi` (`tools list` reads the policy: `policy/catalog.py` runs it)."""
    return _import_openapi(args)


def _import_openapi(args: argparse.Namespace) -> int:
    from opsagent.tools.importer import import_openapi
    from opsagent.tools.sources import AuthHeader, dump_source

    auth = []
    if args.auth_env or args.auth_secret:
        auth = [AuthHeader(header=args.auth_header, scheme=args.auth_scheme, env=args.auth_env,
                           secret=args.auth_secret)]
    elif args.auth_scheme:
        raise InputError("--auth-scheme needs --auth-env or --auth-secret (where the value comes from)")
    if args.retries < 0:
        raise InputError("--retries must be 0 or more")
    both = sorted(set(args.read) & set(args.write))
    if both:
        raise InputError(f"marked both read and write: {', '.join(both)}")
    try:
        imported = import_openapi(
            args.spec, args.name, args.base_url, auth=auth, timeout_s=args.timeout, retries=args.retries,
            embed=not args.no_embed, reads=args.read, writes=args.write, exclude=args.exclude,
        )
    except ToolError as exc:  # --read/--write/--exclude named an operation the document lacks: usage
        if "overrides name operations" in str(exc):
            raise InputError(str(exc)) from None
        raise
    text = dump_source(imported.source)
    summary = format_table(
        ["tool", "method", "path", "access", "dry_run"],
        [(t.name, t.method, t.path, "write" if t.writes else "read", "yes" if t.supports_dry_run else "no")
         for t in imported.tools])
    notes = [f"left out {op}: {why}" for op, why in imported.skipped.items()]
    if args.out is None:
        print(text, end="")
        print(summary, *notes, sep="\n", file=sys.stderr)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(summary, *notes, f"wrote {args.out} ({len(imported.tools)} tools of {args.name})", sep="\n")
    return 0
