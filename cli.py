"""`opsagent`: the command line. Subcommands import their heavy parts lazily."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opsagent.agents.tracing import cli as tracing_cli
from opsagent.evals import autonomy_cli
from opsagent.evals import cli as catalogue_cli
from opsagent.evals.bench import cli as bench_cli
from opsagent.errors import OpsAgentError
from opsagent.tools import cli as tools_cli


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
    tools_cli.add_parser(sub)
    catalogue_cli.add_eval_parser(sub)
    autonomy_cli.add_parser(sub)
    bench_cli.add_parser(sub)
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
    _offline_parsers(sub)
    return p


def _offline_parsers(sub: argparse._SubParsersAction) -> None:
    """replay, policy what-if, evals add-case / regressions: offline, over the trace store."""
    replay = sub.add_parser("replay", help="what the agent saw and decided at each step of a case")
    replay.add_argument("case_id")
    replay.add_argument("--traces", default="traces", help="trace root (folder or URI)")
    replay.add_argument("--full-prompt", action="store_true", help="print every prompt message whole")
    replay.add_argument("--what-if", action="store_true",
                        help="re-plan every recorded step with the planner below; nothing is executed")
    _planner_options(replay)

    policy = sub.add_parser("policy", help="policy tools over the trace history")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    whatif = psub.add_parser("what-if", help="which past actions a new policy file would deny or hold")
    whatif.add_argument("policy_file", type=Path)
    whatif.add_argument("--traces", default="traces", help="trace root (folder or URI)")
    whatif.add_argument("--since", help="only actions proposed from this ISO date/time on")

    evals = sub.add_parser("evals", help="regression cases made from traced cases")
    esub = evals.add_subparsers(dest="evals_command", required=True)
    add = esub.add_parser("add-case", help="freeze a traced case as a regression case")
    add.add_argument("case_id")
    add.add_argument("--traces", default="traces", help="trace root (folder or URI)")
    add.add_argument("--out", type=Path, default=Path("regressions"), help="folder of regression cases")
    add.add_argument("--outcome", choices=["resolved", "escalated"],
                     help="how the case should have ended (default: as it did)")
    add.add_argument("--at", type=int, help="the step at which it should have ended with --outcome")
    add.add_argument("--step", type=int, help="with --tool/--args: the step that should have made that call")
    add.add_argument("--tool", help="the call step --step should have made")
    add.add_argument("--args", help="its arguments as JSON")
    add.add_argument("--key-args", help="comma-separated arguments that must match (default: all)")
    add.add_argument("--note", default="", help="the failure this guards against")
    add.add_argument("--force", action="store_true", help="replace an existing file")
    reg = esub.add_parser("regressions", help="replay every regression case; exit 1 if one differs")
    reg.add_argument("folder", type=Path, nargs="?", default=Path("regressions"))
    _planner_options(reg)


def _planner_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--config", type=Path, help="system config YAML: the model (default: embedded)")
    cmd.add_argument("--playbooks", type=Path, help="folder of playbook YAMLs replacing the built-in ones")
    cmd.add_argument("--policy", type=Path, help="policy YAML deciding the tools offered")


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
        if args.command == tools_cli.COMMAND:
            return tools_cli.run(args)
        if args.command == "eval":
            return catalogue_cli.run_eval(args)
        if args.command == bench_cli.COMMAND:
            return bench_cli.run(args, argv)
        if args.command == autonomy_cli.COMMAND:
            return autonomy_cli.run(args)
        if args.command == "tokens":
            from opsagent.policy.identity import TokenStore

            print(TokenStore(args.state / "tokens.json").add(args.name, args.role))
            return 0
        if args.command == "approvals":
            return _approvals(args)
        if args.command in ("replay", "policy", "evals"):
            return _offline(args)
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


def _offline(args: argparse.Namespace) -> int:
    import asyncio

    from opsagent.agents.tracing.replay import load_case_trace, render_replay
    from opsagent.errors import InputError

    from opsagent.tools.platform.launcher import sandbox_registry

    if args.command == "policy":
        from datetime import datetime

        from opsagent.policy.config import PolicyConfig
        from opsagent.policy.whatif import policy_what_if, render_policy_what_if

        try:
            since = datetime.fromisoformat(args.since) if args.since else None
        except ValueError as exc:
            raise InputError(f"--since {args.since!r} is not an ISO date/time") from exc
        if since is not None and since.tzinfo is None:
            from datetime import UTC

            since = since.replace(tzinfo=UTC)
        config = PolicyConfig.from_yaml(args.policy_file)
        print(render_policy_what_if(policy_what_if(args.traces, config, sandbox_registry(), since=since)))
        return 0
    if args.command == "evals" and args.evals_command == "add-case":
        from opsagent.evals.regressions import add_case, corrected_action

        action = corrected_action(args.step, args.tool, args.args, args.key_args)
        path = add_case(args.traces, args.case_id, args.out, outcome=args.outcome, at=args.at,
                        action=action, note=args.note, force=args.force)
        print(f"wrote {path}")
        return 0
    if args.command == "replay":
        trace = load_case_trace(args.traces, args.case_id)
        print(render_replay(trace, full_prompt=args.full_prompt))
        if not args.what_if:
            return 0
    return asyncio.run(_replan(args))


async def _replan(args: argparse.Namespace) -> int:
    """`replay --what-if` and `evals regressions`: re-plan recorded steps with a planner."""
    from opsagent.agents.planner import Planner
    from opsagent.agents.playbooks.model import builtin_playbooks, load_playbook
    from opsagent.agents.tracing.replay import load_case_trace
    from opsagent.agents.whatif import render_what_if, what_if
    from opsagent.cluster.config import SystemConfig
    from opsagent.cluster.system import make_engine
    from opsagent.evals.regressions import load_regressions, run_regressions
    from opsagent.policy.config import PolicyConfig, load_default_policy
    from opsagent.policy.engine import PolicyEngine
    from opsagent.tools.platform.launcher import sandbox_registry

    cases = load_regressions(args.folder) if args.command == "evals" else None
    config = SystemConfig.from_yaml(args.config) if args.config else SystemConfig()
    playbooks = builtin_playbooks()
    if args.playbooks:
        playbooks |= {b.exception_type: b for b in map(load_playbook, sorted(args.playbooks.glob("*.yaml")))}
    registry = sandbox_registry()
    policy = PolicyEngine(PolicyConfig.from_yaml(args.policy) if args.policy else load_default_policy(),
                          registry)
    engine = make_engine(config)
    await engine.start()
    try:
        planner = Planner(engine, playbooks, registry, **config.planner.planner_options())
        if cases is None:
            trace = load_case_trace(args.traces, args.case_id)
            print()
            print(render_what_if(await what_if(trace, planner, policy.allowed_tools(trace.exception_type))))
            return 0
        classes = {c.exception_type for c in cases}
        results = await run_regressions(cases, planner, {k: policy.allowed_tools(k) for k in classes})
    finally:
        await engine.close()
    for result in results:
        print(render_what_if(result))
    failed = [r.case_id for r in results if r.first_difference is not None]
    print(f"{len(results) - len(failed)}/{len(results)} regression cases reproduce their decisions"
          + (f"; differing: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
