"""`opsagent tokens add|list|revoke` and `opsagent approvals list|show|approve|reject`.

Tokens are managed through the API (an admin's `$OPSAGENT_TOKEN`) when `--url` or `$OPSAGENT_URL`
is set, so a cluster is administered without shell access to its state volume; otherwise in the
local state database (`--state`). Approvals always go through the API. `cli.py` wires both in with
`add_parser(subparsers)` and runs `run(args)` for a command in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

COMMANDS = frozenset({"tokens", "approvals"})
ROLES = ["submitter", "approver", "auditor", "admin"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    tokens = subparsers.add_parser(
        "tokens", help="API tokens: add, list, revoke (through the API when OPSAGENT_URL is set, "
        "else the state database, --state)")
    ksub = tokens.add_subparsers(dest="tokens_command", required=True)
    add = ksub.add_parser("add", help="create a token and print it once")
    add.add_argument("name", help="who the token is for (traced as the identity)")
    add.add_argument("--role", action="append", required=True, choices=ROLES, help="repeatable")
    add.add_argument("--expires", metavar="DURATION",
                     help="lifetime, e.g. 30d, 12h, 90m, 2w (default: until revoked)")
    listing = ksub.add_parser("list", help="every token: name, roles, created, expires, last used, state")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = ksub.add_parser("revoke", help="revoke a token by id (tok-...) or every token of a name")
    revoke.add_argument("ref", help="a token id from `tokens list`, or a name")
    for cmd in (add, listing, revoke):
        cmd.add_argument("--state", default=os.environ.get("OPSAGENT_STATE_URL", "state"),
                         help="the state database: a state folder (its state.sqlite) or a state URL "
                         "(local use; default $OPSAGENT_STATE_URL, else ./state)")
        cmd.add_argument("--url", help="API root (default $OPSAGENT_URL; when set, the API is used "
                         "with the admin token $OPSAGENT_TOKEN)")

    approvals = subparsers.add_parser("approvals", help="held high-risk actions (needs OPSAGENT_TOKEN)")
    asub = approvals.add_subparsers(dest="approvals_command", required=True)
    for name, text in (("list", "list approvals"), ("show", "one approval with its preview"),
                       ("approve", "approve exactly the previewed action (asks first)"),
                       ("reject", "reject, with a reason the planner is told")):
        cmd = asub.add_parser(name, help=text)
        cmd.add_argument("--url", help="API root (default $OPSAGENT_URL or http://127.0.0.1:8000)")
        if name == "list":
            cmd.add_argument("--status", default="pending",
                             choices=["pending", "approved", "rejected", "expired", "all"])
        else:
            cmd.add_argument("approval_id")
        if name in ("list", "show"):
            cmd.add_argument("--json", action="store_true", help="print the API's JSON")
        if name in ("approve", "reject"):
            cmd.add_argument("--reason", required=name == "reject")
            cmd.add_argument("--digest", help="the args digest you reviewed (approves without asking)")
        if name == "approve":
            cmd.add_argument("--yes", "-y", action="store_true",
                             help="approve the action shown now without asking")


def run(args: argparse.Namespace) -> int:
    if args.command == "tokens":
        return _tokens(args)
    return _approvals(args)


def api_url(args: argparse.Namespace) -> str | None:
    """The API to administer through: `--url`, else `$OPSAGENT_URL`, else None (local files)."""
    return getattr(args, "url", None) or os.environ.get("OPSAGENT_URL") or None


def _tokens(args: argparse.Namespace) -> int:
    from opsagent.cli_output import print_json
    from opsagent.policy.identity import IssuedToken, TokenInfo, TokenStore, parse_duration

    url = api_url(args)
    expires_s = parse_duration(args.expires) if getattr(args, "expires", None) else None
    if url is not None:
        from opsagent.cluster.client import OpsAgentClient

        with OpsAgentClient(url) as client:
            if args.tokens_command == "add":
                issued = IssuedToken.model_validate(client.create_token(args.name, args.role, expires_s))
            elif args.tokens_command == "list":
                infos = [TokenInfo.model_validate(t) for t in client.tokens()]
            else:
                revoked = [TokenInfo.model_validate(t) for t in client.revoke_token(args.ref)]
    else:
        from opsagent.policy.state import state_of

        store = TokenStore(state_of(args.state))
        if args.tokens_command == "add":
            issued = store.create(args.name, args.role, expires_s=expires_s)
        elif args.tokens_command == "list":
            infos = store.listing()
        else:
            from opsagent.errors import InputError, OpsAgentError

            try:
                revoked = store.revoke(args.ref, by=os.environ.get("USER") or "local")
            except InputError as exc:  # a runtime failure, as the API's 404
                raise OpsAgentError(str(exc)) from None
    if args.tokens_command == "add":
        print(issued.token)
        expiry = issued.info.expires_at.isoformat(timespec="seconds") if issued.info.expires_at else "never"
        print(f"{issued.info.token_id} for {issued.info.name} ({', '.join(issued.info.roles)}), "
              f"expires {expiry}; shown once, stored hashed", file=sys.stderr)
        return 0
    if args.tokens_command == "list":
        if args.json:
            return print_json(infos)
        print(render_tokens(infos))
        return 0
    for info in revoked:
        print(f"revoked {info.token_id} of {info.name}")
    return 0


def render_tokens(infos: list) -> str:
    from opsagent.cli_output import format_table

    def at(value: Any) -> str:
        return value.strftime("%Y-%m-%d %H:%M") if value else "-"

    return format_table(["token_id", "name", "roles", "created", "expires", "last_used", "state"],
                        [(i.token_id, i.name, ",".join(i.roles), at(i.created_at), at(i.expires_at) if
                          i.expires_at else "never", at(i.last_used_at), i.state()) for i in infos])


def _approvals(args: argparse.Namespace) -> int:
    from opsagent.cli_output import format_table
    from opsagent.cli_output import print_json
    from opsagent.cluster.client import OpsAgentClient
    from opsagent.errors import ApprovalError

    with OpsAgentClient(args.url) as client:
        if args.approvals_command == "list":
            rows = client.approvals(None if args.status == "all" else args.status)
            if args.json:
                return print_json(rows)
            print(format_table(
                ["approval_id", "case_id", "tool", "risk", "status", "requested_at", "args"],
                [(a["approval_id"], a["case_id"], a["tool"], a["risk"], a["status"],
                  a["requested_at"][:19], json.dumps(a["args"])) for a in rows]))
            return 0
        context = client.approval_context(args.approval_id)
        approval = context["approval"]
        if args.approvals_command == "show" and args.json:
            return print_json(context)
        print(render_approval(context))
        if args.approvals_command == "show":
            return 0
        digest = args.digest or approval["args_digest"]
        if digest != approval["args_digest"]:
            raise ApprovalError("the action changed since you reviewed it: show it again")
        if args.approvals_command == "approve" and approval["status"] == "pending" and not (args.digest or args.yes):
            confirm(f"approve {approval['tool']} on case {approval['case_id']}?")
        done = client.decide(args.approval_id, approve=args.approvals_command == "approve",
                             args_digest=digest, reason=args.reason)
        print(f"{done['approval_id']}: {done['status']} by {done['approver']}")
        return 0


def render_approval(context: dict) -> str:
    """A held action as an approver reads it: what, on which case, why held, and the diff."""
    a = context["approval"]
    lines = [f"{a['approval_id']}  {a['status']}  case {a['case_id']} ({a['exception_type']}, "
             f"{context.get('case_status') or 'case unknown'})",
             f"action   {a['tool']} (risk {a['risk']}, step {a['step']})",
             f"args     {json.dumps(a['args'], sort_keys=True)}",
             f"digest   {a['args_digest']}",
             f"held     {'; '.join(a['reasons']) or '-'}",
             f"expires  {a['expires_at'][:19]}"]
    if context.get("evidence"):
        lines.append(f"evidence {json.dumps(context['evidence'], sort_keys=True)}")
    if a.get("approver"):
        lines.append(f"decided  by {a['approver']} at {(a.get('decided_at') or '')[:19]}: {a.get('reason') or ''}")
    lines.append("preview (the system's dry run):")
    lines.append("  " + json.dumps(a.get("preview"), indent=1, sort_keys=True).replace("\n", "\n  "))
    return "\n".join(lines)


def confirm(question: str) -> None:
    """Ask on the terminal; UsageError without one (pass --yes or --digest) or on anything but yes."""
    from opsagent.errors import UsageError

    if not sys.stdin.isatty():
        raise UsageError("not a terminal, so nothing was approved: review with `approvals show`, then "
                         "pass --digest DIGEST (or --yes) to approve without asking")
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        raise UsageError("not approved (answer y to approve)")
