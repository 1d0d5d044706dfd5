"""`opsagent`: the command line. Subcommands import their heavy parts lazily."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opsagent.agents.tracing import cli as tracing_cli
from opsagent.evals import cli as catalogue_cli
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

    tracing_cli.add_parser(sub)
    catalogue_cli.add_parser(sub)
    tokens = sub.add_parser("tokens", help="API tokens (stored hashed in STATE/tokens.json)")
    ksub = tokens.add_subparsers(dest="tokens_command", required=True)
    add = ksub.add_parser("add", help="create a token and print it once")
    add.add_argument("name", help="who the token is for (traced as the identity)")
    add.add_argument("--role", action="append", required=True,
                     choices=["submitter", "approver", "auditor", "admin"], help="repeatable")
    add.add_argument("--state", type=Path, default=Path("state"), help="state folder")

    approvals = sub.add_parser("approvals", help="held high-risk actions (needs OPSAGENT_TOKEN)")
    asub = approvals.add_subparsers(dest="approvals_command", required=True)
    for name, text in (("list", "list approvals"), ("show", "one approval with its preview"),
                       ("approve", "approve exactly the previewed action"),
                       ("reject", "reject, with a reason the planner is told")):
        cmd = asub.add_parser(name, help=text)
        cmd.add_argument("--url", help="API root (default $OPSAGENT_URL or http://127.0.0.1:8000)")
        if name == "list":
            cmd.add_argument("--status", default="pending",
                             choices=["pending", "approved", "rejected", "expired", "all"])
        else:
            cmd.add_argument("approval_id")
        if name in ("approve", "reject"):
            cmd.add_argument("--reason", required=name == "reject")
            cmd.add_argument("--digest", help="the args digest you reviewed (default: the one shown now)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from opsagent.cluster.demo import run_demo

            return run_demo(cases=args.cases, traces=args.traces, seed=args.seed,
                            config_path=args.config, port=args.port, timeout_s=args.timeout)
        if args.command in tracing_cli.COMMANDS:
            return tracing_cli.run(args)
        if args.command == "catalogue":
            return catalogue_cli.run(args)
        if args.command == "tokens":
            from opsagent.policy.identity import TokenStore

            print(TokenStore(args.state / "tokens.json").add(args.name, args.role))
            return 0
        if args.command == "approvals":
            return _approvals(args)
    except OpsAgentError as exc:
        print(f"opsagent: error: {exc}", file=sys.stderr)
        return 2
    return 1


def _approvals(args: argparse.Namespace) -> int:
    import json

    from opsagent.agents.tracing.report import format_table
    from opsagent.cluster.client import OpsAgentClient
    from opsagent.errors import ApprovalError

    with OpsAgentClient(args.url) as client:
        if args.approvals_command == "list":
            rows = client.approvals(None if args.status == "all" else args.status)
            print(format_table(
                ["approval_id", "case_id", "tool", "risk", "status", "requested_at", "args"],
                [(a["approval_id"], a["case_id"], a["tool"], a["risk"], a["status"],
                  a["requested_at"][:19], json.dumps(a["args"])) for a in rows]))
            return 0
        approval = client.approval(args.approval_id)
        print(json.dumps({k: approval[k] for k in ("approval_id", "case_id", "tool", "args", "risk",
                          "reasons", "status", "args_digest", "preview")}, indent=1))
        if args.approvals_command == "show":
            return 0
        digest = args.digest or approval["args_digest"]
        if digest != approval["args_digest"]:
            raise ApprovalError("the action changed since you reviewed it: show it again")
        done = client.decide(args.approval_id, approve=args.approvals_command == "approve",
                             args_digest=digest, reason=args.reason)
        print(f"{done['approval_id']}: {done['status']} by {done['approver']}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
