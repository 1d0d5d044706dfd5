"""`opsagent bench latency|throughput|load`: the speed benchmark (run it under `flock /tmp/engine.lock`)
and the steady-rate soak of the local cluster (`evals/bench/soak.py`).

Both run opsagent at each concurrency level in a closed loop; `latency` then measures the floor
and the engine choices, `throughput` runs the LangGraph peers. `--phases` picks any mix.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

COMMAND = "bench"
PHASES = ("system", "floor", "choices", "peer")
PEER_KINDS = ("react", "structured")
DEFAULT_PHASES = {"latency": "system,floor,choices", "throughput": "system,peer"}
DEFAULT_CLASSES = "missed_pickup,weight_mismatch"


def _positive_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _phases(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in PHASES]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"phases are {', '.join(PHASES)}; got {text!r}")
    return values


def _choices(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("auto", "required") for v in values):
        raise argparse.ArgumentTypeError(f"tool choices are auto and required; got {text!r}")
    return values


def _kinds(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in PEER_KINDS for v in values):
        raise argparse.ArgumentTypeError(f"peer kinds are {', '.join(PEER_KINDS)}; got {text!r}")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    bench = subparsers.add_parser(COMMAND, help="speed benchmark: latency, throughput, floor, LangGraph peer")
    sub = bench.add_subparsers(dest="bench_command", required=True)
    for name, text in (("latency", "latency percentiles, breakdown, floor and engine choices"),
                       ("throughput", "cases per second per concurrency level, and the LangGraph peer")):
        cmd = sub.add_parser(name, help=text)
        src = cmd.add_mutually_exclusive_group()
        src.add_argument("--set", type=Path, help="a frozen eval set folder (opsagent catalogue make)")
        src.add_argument("--classes", help=f"classes of a set made now (default {DEFAULT_CLASSES})")
        cmd.add_argument("--per-class", type=int, default=16, help="instances per class of a made set (16)")
        cmd.add_argument("--seed", type=int, default=11, help="seed of a made set (held out; default 11)")
        cmd.add_argument("--concurrency", type=_positive_list, default=[1, 4, 16, 32],
                         help="closed-loop concurrency levels (default 1,4,16,32)")
        cmd.add_argument("--cases", type=_positive_list,
                         help="cases per level, one value or one per level (default 2 x concurrency, at "
                         "least 4, at most the set's size)")
        cmd.add_argument("--phases", type=_phases, default=_phases(DEFAULT_PHASES[name]),
                         help=f"any of {','.join(PHASES)} (default {DEFAULT_PHASES[name]})")
        cmd.add_argument("--choice-cases", type=int, default=4, help="cases re-issued per engine choice (4)")
        cmd.add_argument("--peer-concurrency", type=_positive_list, default=[1, 16],
                         help="levels the peer runs (default 1,16)")
        cmd.add_argument("--peer-kind", type=_kinds, default=list(PEER_KINDS),
                         help="LangGraph peers: react (prebuilt ReAct agent, once per --peer-tool-choice), "
                         "structured (a graph whose model calls are JSON-schema steps of the class's tools, "
                         "opsagent's playbook prompt); default both")
        cmd.add_argument("--peer-tool-choice", type=_choices, default=["auto", "required"],
                         help="the ReAct peer's tool_choice: auto (hermes parser), required (grammar); default both")
        cmd.add_argument("--two-step-class", default="missed_pickup",
                         help="class whose p50 is held to the 2 s target (default missed_pickup)")
        cmd.add_argument("--config", type=Path, help="system config YAML (default: embedded model)")
        cmd.add_argument("--report", type=Path, help="write the results into this Markdown file's section")
        cmd.add_argument("--json", type=Path, help="write the raw results as JSON")
        cmd.add_argument("--resume", type=Path, metavar="WORK",
                         help="measure the floor/choices/peer phases again on the traces an earlier run "
                         "kept in WORK (its --work), without running the system again")
        cmd.add_argument("--work", type=Path, help="keep the run's traces, state and logs in this folder "
                         "(default: a temporary one, removed afterwards)")
        cmd.add_argument("--no-progress", action="store_true",
                         help="no progress line per level (it is shown only when the output is a terminal)")
    add_load_parser(sub)
    return bench


def add_load_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`load` under `opsagent bench`."""
    p = subparsers.add_parser("load", help="steady-rate soak of the local cluster (throughput, "
                              "p50/p95 latency, actor memory, lost cases)")
    p.add_argument("--cases", type=int, default=1000, help="cases to submit (default 1000)")
    p.add_argument("--rate", type=float, default=5.0, help="submissions per second (default 5)")
    p.add_argument("--engine", choices=["scripted", "vllm"], default="scripted",
                   help="planner engine: scripted gold planner (default) or the embedded model")
    p.add_argument("--executors", type=int, default=2, help="executor actors (default 2)")
    p.add_argument("--autoscale", metavar="MIN:MAX",
                   help="size the executor pool with its load between MIN and MAX executors "
                   "(replaces --executors; reported as the pool size over time)")
    p.add_argument("--planner-replicas", type=int, default=1, help="planner actors (default 1)")
    p.add_argument("--case-cache", type=int, default=None,
                   help="finished cases the case manager keeps in memory (default: the config's, 1000)")
    p.add_argument("--suspect-share", type=float, default=0.1,
                   help="share of cases whose scale failed (they escalate; default 0.1)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait for the last cases after the last submission")
    p.add_argument("--calls-per-minute", type=int, default=100_000,
                   help="the policy's cluster-wide call rate limit for the run (default 100000; "
                   "the shipped policy's 600 a minute holds about 3 cases a second)")
    p.add_argument("--report", type=Path, help="append a Load section to this markdown file")
    p.add_argument("--state", help="the state database URL (default: a fresh SQLite file), e.g. "
                   "postgresql://user@host/db (an empty database: the run's figures are read back from it)")
    p.add_argument("--seed", type=int, default=4242)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress line (it is shown only when the output is a terminal)")
    return p


def cases_per_level(levels: list[int], cases: list[int] | None, set_size: int) -> dict[int, int]:
    """Cases at each level: as given (one value for all, or one per level), else 2 x concurrency
    (at least 4), never more than the set holds."""
    if cases is not None and len(cases) not in (1, len(levels)):
        raise ValueError(f"--cases takes one value or one per level ({len(levels)}), got {len(cases)}")
    out = {}
    for n, level in enumerate(levels):
        want = (cases[0] if len(cases) == 1 else cases[n]) if cases else max(4, 2 * level)
        out[level] = min(want, set_size)
    return out


def run(args: argparse.Namespace, argv: list[str] | None = None) -> int:
    if args.bench_command == "load":
        from opsagent.evals.bench.soak import run_load

        return run_load(args)
    from opsagent.cluster.config import SystemConfig
    from opsagent.errors import InputError
    from opsagent.evals.bench.report import render, write_section
    from opsagent.evals.bench.run import BenchConfig, run_bench
    from opsagent.evals.evalset import load_eval_set, make_eval_set

    if args.per_class < 1 or args.choice_cases < 1:
        raise InputError("--per-class and --choice-cases must be >= 1")
    if args.set is not None:
        instances = load_eval_set(args.set)
    else:
        classes = [c.strip() for c in (args.classes or DEFAULT_CLASSES).split(",") if c.strip()]
        instances = make_eval_set(args.seed, args.per_class, classes)
    try:
        sizes = cases_per_level(args.concurrency, args.cases, len(instances))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    for level in args.peer_concurrency:
        sizes.setdefault(level, min(max(4, 2 * level), len(instances)))
    config = SystemConfig.from_yaml(args.config) if args.config else SystemConfig()
    cfg = BenchConfig(levels=args.concurrency, cases_per_level=sizes, phases=args.phases,
                      choice_cases=args.choice_cases, peer_levels=args.peer_concurrency,
                      peer_kinds=args.peer_kind, peer_tool_choices=args.peer_tool_choice, system=config)
    command = "opsagent " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    resume = None
    if args.resume is not None:
        from opsagent.evals.bench.run import BenchResult

        try:
            resume = BenchResult.model_validate_json((args.resume / "result.json").read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"{args.resume} holds no earlier benchmark result: {exc}") from None
    work = args.resume or args.work
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    from opsagent.progress import CaseProgress, progress_wanted

    wanted = progress_wanted(args.no_progress)
    result = run_bench(cfg, instances, command=command, work=work, resume=resume,
                       log=lambda m: print(m, flush=True),
                       progress=lambda total, label: CaseProgress(total, f"bench {label}", enabled=wanted))
    text = render(result, title=f"opsagent bench {args.bench_command}", two_step_class=args.two_step_class)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(result.model_dump_json(indent=1))
    if args.report:
        write_section(args.report, args.bench_command, text)
    return 0
