"""`opsagent`: the command line. Subcommands import their heavy parts lazily."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opsagent.agents.tracing import cli as tracing_cli
from opsagent.cluster import admin_cli, deploy_cli
from opsagent.errors import InputError, OpsAgentError
from opsagent.evals import autonomy_cli
from opsagent.evals import cli as catalogue_cli
from opsagent.evals.bench import cli as bench_cli
from opsagent.policy.state import cli as state_cli
from opsagent.tools import cli as tools_cli


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("opsagent")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    """Reads the old spellings (`_argv`)."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self.prog == "opsagent":
            args = _argv(list(sys.argv[1:] if args is None else args))
        return super().parse_known_args(args, namespace)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="opsagent", description=__doc__,
        epilog="Exit codes: 0 success, 1 a runtime failure, 2 a usage error. Reading commands take "
        "--json. Shell completion: eval \"$(opsagent completion bash)\".")
    p.add_argument("--version", action="version", version=f"opsagent {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="resolve injected weight-mismatch exceptions end to end")
    demo.add_argument("--cases", type=int, default=20, help="how many exceptions (default 20)")
    demo.add_argument("--traces", type=Path, default=Path("traces"), help="trace folder")
    demo.add_argument("--seed", type=int, default=7, help="seed of the injected exceptions")
    demo.add_argument("--config", type=Path, help="system config YAML (default: embedded model)")
    demo.add_argument("--port", type=int, default=0, help="Serve HTTP port (default: a free one)")
    demo.add_argument("--timeout", type=float, default=900, help="seconds to wait for the cases")
    demo.add_argument("--no-progress", action="store_true",
                      help="no progress line (it is shown only when the output is a terminal)")

    tracing_cli.add_parser(sub)
    catalogue_cli.add_parser(sub)
    tools_cli.add_parser(sub)
    catalogue_cli.add_eval_parser(sub)
    autonomy_cli.add_parser(sub)
    bench_cli.add_parser(sub)
    admin_cli.add_parser(sub)
    state_cli.add_parser(sub)
    deploy_cli.add_parser(sub)
    _offline_parsers(sub)
    completion = sub.add_parser("completion", help="print the shell completion script",
                                description="bash/zsh: eval \"$(opsagent completion bash)\" in your "
                                "shell's rc file; fish: opsagent completion fish | source")
    completion.add_argument("shell", choices=["bash", "zsh", "fish", "tcsh", "powershell"])
    return p


def _offline_parsers(sub: argparse._SubParsersAction) -> None:
    """replay and policy what-if: offline, over the trace store."""
    replay = sub.add_parser("replay", help="what the agent saw and decided at each step of a case")
    replay.add_argument("case_id")
    replay.add_argument("--traces", default="traces", help="trace root (folder or URI)")
    replay.add_argument("--full-prompt", action="store_true", help="print every prompt message whole")
    replay.add_argument("--what-if", action="store_true",
                        help="re-plan every recorded step with the planner below; nothing is executed")
    catalogue_cli.planner_options(replay)

    policy = sub.add_parser("policy", help="policy tools over the trace history")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    whatif = psub.add_parser("what-if", help="which past actions a new policy file would deny or hold")
    whatif.add_argument("policy_file", type=Path)
    whatif.add_argument("--traces", default="traces", help="trace root (folder or URI)")
    whatif.add_argument("--since", help="only actions proposed from this ISO date/time on")


def _argv(argv: list[str]) -> list[str]:
    """Old spellings: `opsagent eval --set ...` means `opsagent eval run --set ...`; `evals` (a
    deprecated name of the one `eval` group) means `eval`."""
    if argv and argv[0] == "evals":
        print("opsagent: `evals` is deprecated; the command is `eval`", file=sys.stderr)
        argv = ["eval", *argv[1:]]
    if argv and argv[0] == "eval" and (
            len(argv) == 1 or argv[1] not in (*catalogue_cli.EVAL_COMMANDS, "-h", "--help")):
        return [argv[0], "run", *argv[1:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit code 0, 1 for a runtime failure, 2 for a usage error (argparse's
    own, or an InputError: a malformed argument or input)."""
    parser = _parser()
    _autocomplete(parser)
    args = parser.parse_args(argv)
    try:
        return _run(args, argv)
    except InputError as exc:
        print(f"opsagent: error: {exc}", file=sys.stderr)
        return 2
    except OpsAgentError as exc:
        print(f"opsagent: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("opsagent: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, argv: list[str] | None) -> int:
    if args.command == "demo":
        from opsagent.cluster.demo import run_demo
        from opsagent.progress import progress_wanted

        return run_demo(cases=args.cases, traces=args.traces, seed=args.seed, config_path=args.config,
                        port=args.port, timeout_s=args.timeout, progress=progress_wanted(args.no_progress))
    if args.command in tracing_cli.COMMANDS:
        return tracing_cli.run(args)
    if args.command == "catalogue":
        return catalogue_cli.run(args)
    if args.command == tools_cli.COMMAND and args.tools_command == "list":
        from opsagent.policy.catalog import run_list

        return run_list(args)
    if args.command == tools_cli.COMMAND:
        return tools_cli.run(args)
    if args.command == "eval":
        if args.eval_command == "run":
            return catalogue_cli.run_eval(args)
        if args.eval_command == "calibrate":
            return catalogue_cli.run_calibrate(args)
        return _offline(args)
    if args.command == bench_cli.COMMAND:
        return bench_cli.run(args, argv)
    if args.command == autonomy_cli.COMMAND:
        return autonomy_cli.run(args)
    if args.command in admin_cli.COMMANDS:
        return admin_cli.run(args)
    if args.command == state_cli.COMMAND:
        return state_cli.run(args)
    if args.command == deploy_cli.COMMAND:
        return deploy_cli.run(args)
    if args.command in ("replay", "policy"):
        return _offline(args)
    if args.command == "completion":
        import argcomplete

        sys.stdout.write(argcomplete.shellcode(["opsagent"], shell=args.shell))
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request (argcomplete; a no-op otherwise)."""
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def _offline(args: argparse.Namespace) -> int:
    import asyncio

    from opsagent.agents.tracing.replay import load_case_trace, render_replay
    from opsagent.errors import InputError

    from opsagent.tools.platform.launcher import sandbox_registry

    if args.command == "policy":
        from datetime import datetime

        from opsagent.evals.policy_whatif import policy_what_if, render_policy_what_if
        from opsagent.policy.config import PolicyConfig

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
    if args.command == "eval" and args.eval_command == "add-case":
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
    """`replay --what-if` and `eval regressions`: re-plan recorded steps with a planner."""
    from opsagent.agents.planner import Planner
    from opsagent.agents.playbooks.model import builtin_playbooks, load_playbook
    from opsagent.agents.tracing.replay import load_case_trace
    from opsagent.cluster.config import SystemConfig
    from opsagent.cluster.system import make_engine
    from opsagent.evals.planner_whatif import render_what_if, what_if
    from opsagent.evals.regressions import load_regressions, run_regressions
    from opsagent.policy.config import PolicyConfig, load_default_policy
    from opsagent.policy.engine import PolicyEngine
    from opsagent.tools.platform.launcher import sandbox_registry

    cases = load_regressions(args.folder) if args.command == "eval" else None
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
