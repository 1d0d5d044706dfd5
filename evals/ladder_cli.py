"""`opsagent eval --ladder`: walk every class up the autonomy ladder on training seeds, then
measure the deployment the gates allow (promoted classes autonomous, the rest supervised) on
the held-out set; with `--diagnostic`, the all-autonomous run beside it on the same set.

One Ray runtime for the whole command; every stage and configuration is one `runner.run_eval`
on its own system (the engine loads once per configuration). Ray is not imported here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from opsagent.evals.catalogue import Instance
from opsagent.evals.ladder import Ladder, StageRunner, climb, gold_verdicts, record, verdicts_of
from opsagent.evals.metrics import CaseResult, ConfigMetrics, EvalRun, format_rate, summarize
from opsagent.evals.runner import EngineFactory, EvalConfig, run_eval
from opsagent.policy.modes import Mode

GATED = "gated"
DIAGNOSTIC = "all-autonomous"


def stage_runner(base: EvalConfig, traces: Path, *, concurrency: int, case_timeout_s: float,
                 engines: EngineFactory | None = None, collected: list[CaseResult] | None = None,
                 progress: Callable[[str, str], None] | None = None) -> StageRunner:
    """A `StageRunner` that runs each stage as an eval of `base` in that mode and reads the gates'
    verdicts from `traces` (shadow cases judged against the gold and recorded first)."""

    def run(instances: list[Instance], stage: Mode, label: str) -> list[tuple[CaseResult, bool | None]]:
        config = base.model_copy(update={"name": label, "mode": stage.value, "class_modes": {}})
        result = run_eval(instances, [config], traces=traces, concurrency=concurrency, engines=engines,
                          case_timeout_s=case_timeout_s, progress=progress, eval_set=f"ladder:{label}")
        if collected is not None:
            collected.extend(result.rows)
        if stage == Mode.shadow:
            record(traces, gold_verdicts(traces, result.rows, instances))
        judged = verdicts_of(traces, result.rows, stage)
        print(f"ladder {label}: {len(judged)} cases, {sum(v is not None for _, v in judged)} verdicts, "
              f"{sum(bool(v) for _, v in judged)} right, wall {result.wall_s:.0f} s", flush=True)
        return judged

    return run


def gated_configs(base: EvalConfig, ladder: Ladder, diagnostic: bool) -> list[EvalConfig]:
    """The deployment the gates allow, and optionally the all-autonomous diagnostic."""
    modes = {c: m.value for c, m in ladder.modes().items()}
    configs = [base.model_copy(update={"name": GATED, "mode": "supervised", "class_modes": modes})]
    if diagnostic:
        configs.append(base.model_copy(update={"name": DIAGNOSTIC, "mode": "autonomous", "class_modes": {}}))
    return configs


def ladder_table(ladder: Ladder, gated: ConfigMetrics | None) -> str:
    """Per class: verdicts and Wilson interval per stage, promoted or not, and its precision once
    promoted (its autonomous writes in the gated held-out run)."""
    from opsagent.agents.tracing.report import format_table

    rows = []
    for name, c in ladder.classes.items():
        stages = {s.stage: s for s in c.stages}
        cells = []
        for stage in (Mode.shadow, Mode.supervised):
            s = stages.get(stage)
            cells.append("not reached" if s is None else
                         f"{s.evidence.correct}/{s.evidence.n} [{s.evidence.low:.2f}, {s.evidence.high:.2f}]"
                         f"{' ok' if s.allowed else ''}")
        g = gated.by_class.get(name) if gated else None
        once = format_rate(g.autonomous_write_precision) if (g and c.promoted) else "-"
        rows.append((name, *cells, c.mode.value, once, f"{c.gate.min_cases}/{c.gate.threshold}"))
    return format_table(["class", "shadow verdicts (Wilson)", "supervised verdicts (Wilson)", "ends in",
                         "precision once promoted (held-out)", "gate n/low"], rows)


def headline(metrics: dict[str, ConfigMetrics]) -> str:
    lines = []
    for name, m in metrics.items():
        o = m.overall
        lines.append(
            f"{name}: automation {format_rate(o.automation)}; precision of writes without a human "
            f"{format_rate(o.autonomous_write_precision)}; escalation recall {format_rate(o.escalation_recall)}; "
            f"approvals asked per case {o.approvals_per_case or 0:.2f}; accuracy {format_rate(o.accuracy)}; "
            f"unsupervised high-risk {o.unsupervised_high_risk}")
    return "\n".join(lines)


def run_ladder(args: argparse.Namespace, instances: list[Instance], base: EvalConfig, *,
               engines: EngineFactory | None = None) -> tuple[Ladder, EvalRun]:
    """The ladder on training seeds, then the gated run (and the diagnostic) on `instances`; Ray
    must be running. Returns the ladder and the held-out run."""
    classes = sorted({i.exception_type for i in instances})
    training: list[CaseResult] = []
    runner = stage_runner(base, args.traces, concurrency=args.concurrency, case_timeout_s=args.case_timeout,
                          engines=engines, collected=training)
    ladder = climb(classes, base.load_policy(), runner, seed=args.train_seed, verdicts=args.verdicts,
                   max_rounds=args.max_rounds, every_stage=args.every_stage)
    Path(args.traces).mkdir(parents=True, exist_ok=True)
    (Path(args.traces) / "ladder.json").write_text(json.dumps(ladder.model_dump(mode="json"), indent=1) + "\n")
    print(ladder_table(ladder, None), flush=True)
    held_out = run_eval(instances, gated_configs(base, ladder, args.diagnostic), traces=args.traces,
                        concurrency=args.concurrency, engines=engines, case_timeout_s=args.case_timeout,
                        eval_set=str(args.eval_set))
    return ladder, held_out


def run_ladder_command(args: argparse.Namespace, instances: list[Instance], base: EvalConfig) -> int:
    """`opsagent eval --ladder`: prints the ladder, the gated headline and the diagnostic; writes
    the results and `ladder.json` beside them. Exit 1 on an unsupervised high-risk action."""
    from opsagent.evals.calibration import confidence_summary
    from opsagent.evals.report import terminal_summary, write_results
    from opsagent.evals.runner import ray_runtime

    with ray_runtime():
        ladder, held_out = run_ladder(args, instances, base)
    metrics = summarize(held_out.rows)
    folder = write_results(held_out, metrics, args.traces)
    (folder / "ladder.json").write_text(json.dumps(ladder.model_dump(mode="json"), indent=1) + "\n")
    print(f"autonomy ladder on training seeds from {ladder.seed} "
          f"(verdicts per stage: {ladder.verdicts or 'the gate’s min_cases'})")
    print(ladder_table(ladder, metrics.get(GATED)))
    print("\nheld-out, " + headline(metrics))
    print("\n" + terminal_summary(held_out, metrics))
    print(confidence_summary(args.traces, held_out.rows, instances))
    print(f"\nresults: {folder}")
    return 1 if any(m.overall.unsupervised_high_risk for m in metrics.values()) else 0
