"""`opsagent catalogue list | make` (the exception catalogue) and `opsagent eval` (the eval runner).

`cli.py` wires them in with `add_parser(subparsers)` / `add_eval_parser(subparsers)` and runs
`run(args)` for `catalogue`, `run_eval(args)` for `eval`. Only argparse is imported here; the
catalogue, the cluster and the engine load when a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `catalogue` with its `list` and `make` subcommands."""
    cat = subparsers.add_parser("catalogue", help="list the exception classes, or make a frozen eval set")
    sub = cat.add_subparsers(dest="catalogue_command", required=True)
    listing = sub.add_parser("list", help="classes, systems touched, risk of their steps, share that should escalate")
    listing.add_argument("--json", action="store_true", help="print JSON")
    make = sub.add_parser("make", help="write N seeded instances per class as JSONL files")
    make.add_argument("--seed", type=int, required=True,
                      help="seed of the set; below 1,000,000 is held out, from 1,000,000 up is training")
    make.add_argument("--per-class", type=int, default=10, help="instances per class (default 10)")
    make.add_argument("--out", type=Path, required=True, help="folder to write the set into")
    make.add_argument("--classes", help="comma-separated class names (default: all)")
    make.add_argument("--wording", choices=["template", "varied"], default="template",
                      help="descriptions from the generators' templates (default), or re-worded: shorthand, "
                      "forwarded mail, German, Spanish, a wrong or a missing figure (gold unchanged)")
    return cat


def run(args: argparse.Namespace) -> int:
    """Run `catalogue list` or `catalogue make`; returns the exit code."""
    if args.catalogue_command == "list":
        if args.json:
            from opsagent.cli_output import print_json, rows_as_objects

            return print_json(rows_as_objects(*catalogue_rows()))
        print(list_table())
        return 0
    from opsagent.evals.evalset import make_eval_set, write_eval_set

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    instances = make_eval_set(args.seed, args.per_class, classes, wording=args.wording)
    manifest = write_eval_set(instances, args.out, seed=args.seed, wording=args.wording)
    escalated = sum(c["escalated"] for c in manifest["classes"].values())
    print(f"wrote {manifest['instances']} instances of {len(manifest['classes'])} classes "
          f"({escalated} to escalate, split: {manifest['split']}) to {args.out}")
    return 0


def list_table(sample: int = 40) -> str:
    """One row per class: systems, the gold's write steps with their risk, escalate and high-risk share."""
    from opsagent.cli_output import format_table

    _, rows = catalogue_rows(sample)
    table = format_table(["class", "systems", "write steps (risk)", "escalate", "high_risk"],
                         [(r[0], ",".join(r[1]), ", ".join(f"{t} ({'/'.join(k)})" for t, k in r[2].items()),
                           f"{r[3]:.0%}", f"{r[4]:.0%}") for r in rows])
    return (f"{table}\n\nClasses with a ticket also close it (tkt_resolve_ticket, low) or hand it to the "
            "class's human team (tkt_assign_ticket, low).\n"
            "escalate: share of instances whose correct outcome is escalation; "
            "high_risk: share with a step that needs approval.")


def catalogue_rows(sample: int = 40) -> tuple[list[str], list[tuple]]:
    """Per class: systems, write steps -> their risks (from `sample` instances), escalate share and
    high-risk share."""
    from opsagent.evals.catalogue import CLASSES, make

    rows = []
    for name, cls in CLASSES.items():
        risks: dict[str, set[str]] = {}
        for inst in make(name, seed=0, count=sample):
            for a in inst.gold.actions:
                if a.writes and not a.tool.startswith("tkt_"):
                    risks.setdefault(a.tool, set()).add(a.risk)
        rows.append((name, list(cls.systems), {tool: sorted(r) for tool, r in sorted(risks.items())},
                     cls.escalate_share, cls.high_risk_share))
    return ["class", "systems", "write_steps", "escalate_share", "high_risk_share"], rows


EVAL_COMMANDS = ("run", "add-case", "regressions", "calibrate")
"""The subcommands of `eval` (also spelled `evals`); `opsagent eval --set ...` means `eval run`."""


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `eval` group: `run` a frozen eval set through the real cluster and score it;
    `add-case` / `regressions` (cli.py runs those two)."""
    group = subparsers.add_parser(
        "eval", help="evaluate: run an eval set, freeze traced cases as regression "
        "cases, replay them", description="`eval run` (also plain `eval --set ...`), `eval add-case`, "
        "`eval regressions`.")
    sub = group.add_subparsers(dest="eval_command", required=True)
    _add_regression_parsers(sub)
    cal = sub.add_parser("calibrate", help="fit the planner's confidence on a TRAINING run and choose "
                         "per-class floors (min_confidence)",
                         description="Platt-scales the model's probability of its choice on the autonomous "
                         "writes of a finished eval run on a training set, then per class picks the lowest "
                         "floor at which that run's writes reach --target precision; with --policy-out, "
                         "writes the policy with those floors.")
    cal.add_argument("--set", dest="eval_set", type=Path, required=True, help="the training set the run used")
    cal.add_argument("--run", dest="run_id", required=True, help="the eval run's id")
    cal.add_argument("--name", default="base", help="its configuration (default base)")
    cal.add_argument("--traces", type=Path, default=Path("traces"), help="trace folder (default ./traces)")
    cal.add_argument("--target", type=float, default=0.95, help="precision each class's floor aims for (0.95)")
    cal.add_argument("--policy", type=Path, help="policy YAML to add the floors to (default: the shipped one)")
    cal.add_argument("--policy-out", type=Path, help="write the policy with the floors here")
    ev = sub.add_parser(
        "run", help="run a frozen eval set through the cluster, score every case, write a report",
        description="Runs every instance of an eval set (opsagent catalogue make) through the real "
        "cluster against fresh copies of the sandbox platform, acts as the human approver of held "
        "actions (approves exactly the gold's actions), scores each case against its gold and "
        "reports automation, precision of autonomous writes, escalation precision/recall, "
        "unsupervised high-risk actions, latency, planner cost and pass^k.")
    ev.add_argument("--set", dest="eval_set", type=Path, default=Path("evalset"),
                    help="eval set folder (default ./evalset)")
    ev.add_argument("--classes", help="comma-separated classes of the set to run (default: all)")
    ev.add_argument("--wording", choices=["template", "varied"], default="template",
                    help="run the set's descriptions as written (default), or re-worded (shorthand, "
                    "forwarded mail, German, Spanish, a wrong or a missing figure; same gold): the "
                    "varied-wording set of the same seed")
    ev.add_argument("--trials", type=int, default=1, help="runs of every instance, for pass^k (default 1)")
    ev.add_argument("--concurrency", type=int, default=8, help="cases in flight at once (default 8)")
    ev.add_argument("--report", type=Path,
                    help="HTML report path (default TRACES/eval_results/run=ID/report.html)")
    ev.add_argument("--traces", type=Path, default=Path("traces"), help="trace folder (default ./traces)")
    ev.add_argument("--config", type=Path, help="system config YAML (default: the embedded model)")
    ev.add_argument("--policy", type=Path, help="policy YAML (default: the config's, else the shipped one)")
    ev.add_argument("--playbooks", type=Path, help="folder of playbook YAMLs replacing the built-in ones")
    ev.add_argument("--mode", choices=["autonomous", "supervised", "shadow"], default="autonomous",
                    help="autonomy mode of the set's classes (default autonomous: low-risk writes run, "
                    "high-risk ones wait for the simulated approver)")
    ev.add_argument("--name", default="base", help="label of this configuration (default base)")
    ev.add_argument("--compare", type=Path, metavar="CONFIG_YAML", action="append",
                    help="another configuration to run on the same set (YAML: name, system, policy, "
                    "playbooks, mode; see evals.runner.EvalConfig); repeat for more")
    ev.add_argument("--case-timeout", type=float, default=1800.0,
                    help="seconds one case may take before it is counted as unfinished (default 1800)")
    ev.add_argument("--no-progress", action="store_true",
                    help="no progress line (it is shown only when the output is a terminal)")
    add_ladder_options(ev)
    return group


def add_ladder_options(ev: argparse.ArgumentParser) -> None:
    """`eval run --ladder` and its options (evals/ladder_cli.py runs it)."""
    ev.add_argument("--ladder", action="store_true",
                    help="walk every class of the set up shadow -> supervised -> autonomous on training "
                    "seeds (the simulated human judging from the gold), then run the held-out --set with "
                    "the promoted classes autonomous and the others supervised")
    ev.add_argument("--train-seed", type=int, default=1_100_000,
                    help="first training seed of the ladder's instances (>= 1,000,000; default 1100000)")
    ev.add_argument("--verdicts", type=int,
                    help="verdicts per class per stage (default: the gate's own min_cases, 200 shipped); "
                    "below the gate's min_cases no class can be promoted")
    ev.add_argument("--max-rounds", type=int, default=2,
                    help="rounds of fresh instances per stage to reach the verdicts (default 2)")
    ev.add_argument("--every-stage", action="store_true",
                    help="run every class in every stage, reached or not (figures only: promotion still "
                    "goes stage by stage)")
    ev.add_argument("--diagnostic", action="store_true",
                    help="with --ladder: also run the held-out set with every class autonomous")


def _add_regression_parsers(sub: argparse._SubParsersAction) -> None:
    add = sub.add_parser("add-case", help="freeze a traced case as a regression case")
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
    reg = sub.add_parser("regressions", help="replay every regression case; exit 1 if one differs")
    reg.add_argument("folder", type=Path, nargs="?", default=Path("regressions"))
    planner_options(reg)


def planner_options(cmd: argparse.ArgumentParser) -> None:
    """The planner a re-planning command uses (`replay --what-if`, `eval regressions`)."""
    cmd.add_argument("--config", type=Path, help="system config YAML: the model (default: embedded)")
    cmd.add_argument("--playbooks", type=Path, help="folder of playbook YAMLs replacing the built-in ones")
    cmd.add_argument("--policy", type=Path, help="policy YAML deciding the tools offered")


def run_eval(args: argparse.Namespace) -> int:
    """Run `opsagent eval run`; returns 0, or 1 if unsupervised high-risk actions were found."""
    import sys

    from opsagent.errors import InputError
    from opsagent.evals.evalset import load_eval_set
    from opsagent.evals.calibration import confidence_summary
    from opsagent.evals.metrics import summarize
    from opsagent.evals.report import terminal_summary, write_html, write_results
    from opsagent.evals.runner import new_run_id, ray_runtime, run_eval as run, select

    if not args.eval_set.is_dir():
        raise InputError(f"eval set folder {args.eval_set} does not exist; make one with "
                         f"`opsagent catalogue make --seed S --out {args.eval_set}`")
    if args.trials < 1 or args.concurrency < 1:
        raise InputError("--trials and --concurrency must be >= 1")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    from opsagent.evals.catalogue import vary

    loaded = load_eval_set(args.eval_set)
    if args.wording == "varied" and not any("wording" in i.facts for i in loaded):
        loaded = vary(loaded)
    instances = select(loaded, classes)
    configs = eval_configs(args)
    if args.ladder:
        from opsagent.evals.ladder_cli import run_ladder_command

        if len(configs) != 1 or args.trials != 1:
            raise InputError("--ladder runs one configuration (no --compare) with one trial")
        return run_ladder_command(args, instances, configs[0])
    run_id = new_run_id()
    total = len(instances) * args.trials * len(configs)
    print(f"eval run {run_id}: {len(instances)} instances x {args.trials} trial(s) x "
          f"{len(configs)} configuration(s) = {total} cases", flush=True)
    from opsagent.progress import CaseProgress, progress_wanted

    with CaseProgress(total, "eval", enabled=progress_wanted(args.no_progress)) as bar, ray_runtime():
        result = run(instances, configs, traces=args.traces, trials=args.trials,
                     concurrency=args.concurrency, progress=lambda config, status: bar.advance(status, f"eval {config}"),
                     case_timeout_s=args.case_timeout, run_id=run_id, eval_set=str(args.eval_set))
    metrics = summarize(result.rows)
    folder = write_results(result, metrics, args.traces)
    report = write_html(result, metrics, args.report or folder / "report.html")
    print(terminal_summary(result, metrics))
    print(confidence_summary(args.traces, result.rows, instances))
    print(f"\nresults: {folder / 'results.parquet'}\n  (DuckDB: SELECT * FROM read_parquet("
          f"'{args.traces}/eval_results/*/*.parquet', hive_partitioning = true))\nreport:  {report}")
    unsupervised = sum(m.overall.unsupervised_high_risk for m in metrics.values())
    if unsupervised:
        print(f"UNSUPERVISED HIGH-RISK ACTIONS: {unsupervised}", file=sys.stderr)
    return 1 if unsupervised else 0


def eval_configs(args: argparse.Namespace) -> list:
    """The configurations to run: `--config/--policy/--playbooks/--mode/--name`, then `--compare`'s
    (named `compare` unless its YAML names it)."""
    from opsagent.cluster.config import SystemConfig
    from opsagent.evals.runner import EvalConfig

    from pydantic import ValidationError

    from opsagent.errors import InputError

    system = SystemConfig.from_yaml(args.config) if args.config else SystemConfig()
    try:
        configs = [EvalConfig(name=args.name, system=system, policy=args.policy, playbooks=args.playbooks,
                              mode=args.mode)]
    except ValidationError as exc:
        raise InputError(f"--name {args.name!r}: 1-40 letters, digits, '.', '_' or '-' ({exc.error_count()} "
                         "error)") from exc
    for number, path in enumerate(args.compare or [], start=1):
        other = EvalConfig.from_yaml(path)
        if "name" not in other.model_fields_set:
            other = other.model_copy(update={"name": "compare" if number == 1 else f"compare{number}"})
        configs.append(other)
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise InputError(f"configurations need distinct names, got {names}")
    return configs




def run_calibrate(args: argparse.Namespace) -> int:
    """`opsagent eval calibrate`: the fit, the floors per class, optionally a policy carrying them."""
    import json

    import pyarrow.parquet as pq
    import yaml

    from opsagent.errors import InputError
    from opsagent.evals.calibration import class_floors, fit_platt, scored_writes
    from opsagent.evals.evalset import load_eval_set
    from opsagent.evals.metrics import CaseResult
    from opsagent.evals.report import results_dir
    from opsagent.policy.config import PolicyConfig, load_default_policy

    try:
        split = json.loads((args.eval_set / "manifest.json").read_text())["split"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{args.eval_set} is not an eval set: {exc}") from exc
    if split != "train":
        raise InputError(f"{args.eval_set} is a {split} set: calibrate on a training set only")
    path = results_dir(args.traces, args.run_id) / "results.parquet"
    if not path.exists():
        raise InputError(f"no results of run {args.run_id} at {path}")
    rows = [CaseResult.model_validate(r) for r in pq.read_table(path).to_pylist() if r["config"] == args.name]
    if not rows:
        raise InputError(f"run {args.run_id} has no rows of configuration {args.name!r}")
    writes = scored_writes(args.traces, rows, load_eval_set(args.eval_set))
    try:
        calibration = fit_platt(writes)
    except ValueError as exc:
        raise InputError(f"cannot calibrate on run {args.run_id}: {exc}") from exc
    print(f"calibration on {calibration.n} model-decided writes ({calibration.right} right): "
          f"P(right) = sigmoid({calibration.a:.3f} * logit(p) + {calibration.b:.3f})")
    floors = class_floors(writes, calibration, target=args.target)
    for f in floors:
        floor = "none" if f.min_confidence is None else f"{f.min_confidence:.3f} (calibrated {f.calibrated:.3f})"
        print(f"  {f.exception_type:<26} floor {floor:<28} precision {f.precision_before.hits}/"
              f"{f.precision_before.n} -> {f.precision_after.hits}/{f.precision_after.n}, held {f.held}")
    if args.policy_out:
        policy = PolicyConfig.from_yaml(args.policy) if args.policy else load_default_policy()
        data = policy.model_dump(mode="json")
        for f in floors:
            if f.exception_type in data["classes"]:
                data["classes"][f.exception_type]["min_confidence"] = f.min_confidence
        PolicyConfig.model_validate(data)
        args.policy_out.write_text(yaml.safe_dump(data, sort_keys=False))
        print(f"wrote {args.policy_out}")
    return 0
