"""`opsagent state migrate --to URL`: move a system's durable state to another database (e.g. a
single-machine install's SQLite file to the cluster's PostgreSQL), verified table by table.
`cli.py` wires it in with `add_parser(subparsers)` and, for `args.command == "state"`, `run(args)`."""

from __future__ import annotations

import argparse
import os
import sys

COMMAND = "state"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    top = subparsers.add_parser(COMMAND, help="the state database: migrate it to another one")
    sub = top.add_subparsers(dest="state_command", required=True)
    migrate = sub.add_parser("migrate", help="copy every store (cases, approvals, ledger, modes, permit "
                             "nonces, tokens) to an empty database, verify counts and digests; refused "
                             "while a system runs on either database")
    migrate.add_argument("--to", required=True, help="the target database URL, e.g. postgresql://user@host/db")
    migrate.add_argument("--from", dest="source", default=os.environ.get("OPSAGENT_STATE_URL", "state"),
                         help="the source: a state folder (its state.sqlite) or a state URL "
                         "(default $OPSAGENT_STATE_URL, else ./state)")
    return top


def run(args: argparse.Namespace) -> int:
    """Run one `state` subcommand; returns the exit code (errors propagate to cli.py)."""
    from pathlib import Path

    from opsagent.errors import StateError
    from opsagent.policy.state._copy import copy_state
    from opsagent.policy.state._engine import State, redact, state_of

    source_url = state_of(args.source)
    if source_url.startswith("sqlite:///") and not Path(source_url.removeprefix("sqlite:///")).exists():
        raise StateError(f"no state database at {redact(source_url)}: nothing to migrate")
    source, target = State(source_url), State(state_of(args.to))
    copies = copy_state(source, target)
    print(f"migrated {source.redacted} -> {target.redacted}")
    print(f"{'store':<12} {'table':<16} {'rows':>8}  digest (sha256, both sides)")
    for c in copies:
        print(f"{c.store:<12} {c.table:<16} {c.target_rows:>8}  {c.target_digest[:16]}  "
              f"{'same' if c.same else 'DIFFERENT'}")
    print(f"{sum(c.target_rows for c in copies)} rows in {len(copies)} tables, every count and digest equal; "
          f"point the system config's `state:` at {target.redacted}", file=sys.stderr)
    return 0
