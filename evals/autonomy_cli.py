"""`opsagent autonomy status | set | compare | review | check`: earned autonomy on the command line.

Works on the system's state database (`--state`): the autonomy modes (the ones the policy actor
reads at every decision, so a change applies at once), the API tokens and the
trace folder. `cli.py` wires it in with `add_parser(subparsers)` and, for `args.command ==
"autonomy"`, `run(args)`. Only argparse is imported here; the rest loads when a command runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

COMMAND = "autonomy"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `autonomy` with its subcommands."""
    top = subparsers.add_parser(COMMAND, help="autonomy modes per exception class, their evidence and gates")
    sub = top.add_subparsers(dest="autonomy_command", required=True)
    status = sub.add_parser("status", help="each class: mode, evidence, Wilson interval, eligibility, last change")
    setter = sub.add_parser("set", help="set a class's mode (admin token; recorded with who and why)")
    setter.add_argument("exception_type")
    setter.add_argument("mode", choices=["shadow", "supervised", "autonomous"])
    setter.add_argument("--reason", required=True, help="why (recorded with the change)")
    setter.add_argument("--override", "--force", dest="override", action="store_true",
                        help="promote one stage although the class is not eligible (recorded in the "
                        "reason); never skips a stage")
    compare = sub.add_parser("compare", help="compare traced cases with a human action log; record verdicts")
    compare.add_argument("--human-log", type=Path, required=True,
                         help="JSONL, one line per instance (an eval set's human_log.jsonl)")
    compare.add_argument("--instances", type=Path,
                         help="the instances' classes and entities (default: instances.jsonl next to the log)")
    review = sub.add_parser("review", help="record an operator's verdict on a finished case (approver token)")
    review.add_argument("case_id")
    verdict = review.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--correct", action="store_true", help="the case was handled correctly")
    verdict.add_argument("--wrong", action="store_true", help="it was not")
    review.add_argument("--reason", required=True, help="what was right or wrong")
    check = sub.add_parser("check", help="demote every class whose live accuracy fell below its gate")
    for cmd in (status, setter, compare, review, check):
        cmd.add_argument("--traces", default="traces", help="trace folder (default ./traces)")
        cmd.add_argument("--state", default=os.environ.get("OPSAGENT_STATE_URL", "state"),
                         help="the state database (modes, tokens): a state folder (its state.sqlite) or "
                         "a state URL (default $OPSAGENT_STATE_URL, else ./state)")
        cmd.add_argument("--policy", type=Path, help="policy YAML (default: the shipped policy)")
    for cmd in (setter, review):
        cmd.add_argument("--token", help="API token (default $OPSAGENT_TOKEN)")
    status.add_argument("--json", action="store_true", help="print JSON")
    setter.add_argument("--url", help="API root (default $OPSAGENT_URL): when set, the mode is changed "
                        "through the API (PUT /v1/autonomy/CLASS) instead of in the state database")
    return top


def run(args: argparse.Namespace) -> int:
    """Run one `autonomy` subcommand; returns the exit code."""
    from opsagent.agents.tracing.evidence import case_verdicts
    from opsagent.evals import verdicts
    from opsagent.policy import gates
    from opsagent.policy.autonomy import AutonomyStore
    from opsagent.policy.config import PolicyConfig, load_default_policy

    if args.autonomy_command == "set" and (args.url or os.environ.get("OPSAGENT_URL")):
        return _set_through_api(args)
    config = PolicyConfig.from_yaml(args.policy) if args.policy else load_default_policy()
    from opsagent.policy.state import state_of

    store = AutonomyStore(state_of(args.state))
    try:
        command = args.autonomy_command
        if command == "status":
            statuses = gates.class_statuses(case_verdicts(args.traces), store, config)
            if args.json:
                from opsagent.cli_output import print_json

                return print_json(statuses)
            print(render_status(statuses))
            return 0
        store.seed(config)  # a class never recorded starts in its policy's initial mode
        if command == "set":
            return _set(args, store, config)
        if command == "compare":
            report = verdicts.compare_human_log(args.traces, args.human_log, args.instances,
                                                writes=_sandbox_writes())
            agree = sum(v.correct for v in report.verdicts)
            print(f"{len(report.verdicts)} case(s) compared: {agree} agree with the human log; "
                  f"{len(report.unmatched)} log line(s) without a finished case, "
                  f"{len(report.incomparable)} case(s) whose log has no outcome")
            return _recorded(verdicts.record_verdicts(args.traces, report.verdicts, store, config))
        if command == "review":
            identity = _identity(args)
            event = verdicts.review(args.traces, args.case_id, correct=args.correct, reason=args.reason,
                                    identity=identity)
            print(f"{event.case_id}: {'correct' if event.correct else 'wrong'} ({event.exception_type}, "
                  f"{event.autonomy_mode}) by {event.actor}")
            return _recorded(verdicts.record_verdicts(args.traces, [event], store, config))
        return _recorded(gates.check(case_verdicts(args.traces), store, config))
    finally:
        store.close()


def render_status(statuses: list) -> str:
    """One row per class."""
    from opsagent.cli_output import format_table

    rows = []
    for s in statuses:
        last = s.last_change
        rows.append((
            s.exception_type, s.mode.value, s.evidence.n, s.evidence.correct,
            f"[{s.evidence.low:.3f}, {s.evidence.high:.3f}]", f"{s.recent.correct}/{s.recent.n}",
            s.why, f"{last.actor}: {last.reason}"[:70] if last else "-"))
    gate = statuses[0].gate if statuses else None
    note = (f"\nevidence: verdicts in the current mode since it was entered; gate: n >= {gate.min_cases} and "
            f"Wilson {gate.confidence:.0%} lower bound >= {gate.threshold} (unless a class sets its own); "
            f"recent: the last {gate.demote_window}, demoted when their upper bound < the threshold"
            if gate else "")
    return format_table(["class", "mode", "n", "correct", "wilson", "recent", "next stage", "last change"],
                        rows) + note


def _set(args: argparse.Namespace, store, config) -> int:
    """Set a mode through the gates' rule (`gates.gate_mode_change`, as the API does)."""
    from opsagent.agents.tracing.evidence import case_verdicts
    from opsagent.errors import AutonomyError
    from opsagent.policy.gates import class_statuses, gate_mode_change
    from opsagent.policy.identity import Role, require
    from opsagent.policy.modes import Mode

    identity = _identity(args)
    require(identity, Role.admin)
    if args.exception_type not in config.classes:
        raise AutonomyError(f"unknown exception class {args.exception_type!r} (policy lists: "
                            f"{', '.join(sorted(config.classes))})")
    target, name = Mode(args.mode), args.exception_type
    current = store.mode(name, config.classes[name].initial_mode)
    status = None
    if target.rank > current.rank:  # only a promotion is judged on the evidence (traces read)
        status = next(s for s in class_statuses(case_verdicts(args.traces), store, config) if s.exception_type == name)
    reason = gate_mode_change(name, current, target, reason=args.reason, override=args.override,
                              status=status)
    change = store.set_mode(name, target, identity=identity, reason=reason, expected=current)
    print(f"{change.exception_type}: {change.from_mode or '-'} -> {change.to_mode} by {change.actor} "
          f"at {change.at.isoformat(timespec='seconds')} ({change.reason})")
    return 0


def _set_through_api(args: argparse.Namespace) -> int:
    """`autonomy set` on a running system: the API applies the same gates' rule, as the admin
    whose token is `--token` / $OPSAGENT_TOKEN."""
    from opsagent.cluster.client import OpsAgentClient

    with OpsAgentClient(args.url, args.token) as client:
        change = client.set_mode(args.exception_type, args.mode, args.reason, args.override)
    print(f"{change['exception_type']}: {change.get('from_mode') or '-'} -> {change['to_mode']} by "
          f"{change['actor']} at {change['at'][:19]} ({change['reason']})")
    return 0


def _identity(args: argparse.Namespace):
    from opsagent.policy.identity import TokenStore
    from opsagent.policy.state import state_of

    return TokenStore(state_of(args.state)).authenticate(args.token or os.environ.get("OPSAGENT_TOKEN"))


def _recorded(demotions: list) -> int:
    for change in demotions:
        print(f"demoted {change.exception_type}: {change.from_mode} -> {change.to_mode} ({change.reason})")
    if not demotions:
        print("no class is below its gate")
    return 0


def _sandbox_writes() -> dict[str, bool]:
    """Which tools write, from the sandbox platform's OpenAPI documents (no tool is called)."""
    from opsagent.tools.platform.launcher import sandbox_registry

    return {spec.name: spec.writes for spec in sandbox_registry().specs()}
