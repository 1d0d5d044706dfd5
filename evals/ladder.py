"""The autonomy ladder as a deployment walks it: shadow, then supervised, then autonomous, per class.

On training seeds, every class runs in shadow mode until its gate has the verdicts it needs (the
gate's `min_cases`, or a smaller `verdicts` budget for quick runs), the simulated human judging
each case from the gold; a class the gates' own rule allows (`gates.gate_allows`: enough verdicts
and the Wilson lower bound at or above the threshold) moves up to supervised and runs again until
that stage has its verdicts; one allowed there is promoted to autonomous. A class never skips a
stage and is never promoted on fewer verdicts than its gate asks for.

Verdicts are the gates' own (`gates.case_verdicts`): a shadow case's proposed writes and outcome
compared with the gold, recorded as a verdict in the trace store like a human log comparison; a
supervised case judged by the simulated approver's decisions (it approves exactly the gold's
actions); a failed case is wrong. A case with no verdict (a supervised case that asked for no
approval) does not count, so a stage runs further rounds of fresh instances, up to `max_rounds`.

The result (`Ladder.modes`) is what a deployment would run with: the promoted classes
autonomous, every other class supervised. `run_gated` measures that mix on the held-out set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from opsagent.agents.tracing.evidence import case_verdicts
from opsagent.agents.tracing.records import VerdictEvent
from opsagent.errors import InputError
from opsagent.evals.catalogue import Instance, make
from opsagent.evals.evalset import require_training_seed
from opsagent.evals.metrics import CaseResult
from opsagent.evals.runner import matched_writes
from opsagent.evals.verdicts import COMPARE_ACTOR, traced_cases
from opsagent.policy.config import PolicyConfig
from opsagent.policy.gates import CaseVerdict, Evidence, gate_allows
from opsagent.policy.modes import GateConfig, Mode

STAGES = (Mode.shadow, Mode.supervised)
"""The stages a class earns its way through; passing the last one promotes it to autonomous."""
ROUND_SEED_STEP = 7919
"""Seed offset between rounds and stages, so every round runs instances no earlier one ran."""

StageRunner = Callable[[list[Instance], Mode, str], list[tuple[CaseResult, bool | None]]]
"""(instances, stage, run label) -> each row with its verdict (None: the case has none)."""


class StageResult(BaseModel):
    """One class at one stage of the ladder: what ran, the verdicts, and the gate's answer."""

    stage: Mode
    cases: int = Field(description="Cases run in this stage (every round).")
    rounds: int
    evidence: Evidence = Field(description="Verdicts counted and their Wilson interval.")
    allowed: bool = Field(description="The gate allows the next stage.")
    why: str
    accuracy: float | None = Field(None, description="Share of the stage's cases that scored 1.0.")


class ClassLadder(BaseModel):
    exception_type: str
    gate: GateConfig
    stages: list[StageResult] = Field(default_factory=list)
    mode: Mode = Field(description="Where the class ends: the last stage it reached.")

    @property
    def promoted(self) -> bool:
        return self.mode == Mode.autonomous


class Ladder(BaseModel):
    """Every class's walk up the ladder."""

    seed: int
    verdicts: int | None = Field(description="The verdict budget per stage; None: each gate's min_cases.")
    classes: dict[str, ClassLadder]

    def modes(self) -> dict[str, Mode]:
        """The deployment's mix: promoted classes autonomous, every other one supervised."""
        return {n: Mode.autonomous if c.promoted else Mode.supervised for n, c in self.classes.items()}


def judge(verdicts: Sequence[bool], gate: GateConfig, stage: Mode) -> tuple[Evidence, bool, str]:
    """The gate's answer on a stage's verdicts: the evidence, whether it allows the next stage, why."""
    correct = sum(verdicts)
    evidence = Evidence.of([_Verdict(correct=v) for v in verdicts], gate.confidence)
    assert evidence.correct == correct
    allowed = gate_allows(evidence, gate)
    if allowed:
        why = f"allowed: {correct}/{evidence.n}, lower bound {evidence.low:.3f} >= {gate.threshold}"
    elif evidence.n < gate.min_cases:
        why = f"not allowed: {evidence.n} verdicts < the gate's {gate.min_cases}"
    else:
        why = f"not allowed: lower bound {evidence.low:.3f} < {gate.threshold} ({correct}/{evidence.n})"
    return evidence, allowed, f"{stage}: {why}"


class _Verdict(BaseModel):
    correct: bool


def climb(classes: Sequence[str], policy: PolicyConfig, runner: StageRunner, *, seed: int,
          verdicts: int | None = None, max_rounds: int = 2, every_stage: bool = False) -> Ladder:
    """Walk `classes` up the ladder on training seeds from `seed` (see the module docstring).

    `every_stage`: also run a class in a stage it did not reach (its figures are then reported,
    but it is still promoted only stage by stage), to see every class at every stage in one run."""
    require_training_seed(seed)
    if verdicts is not None and verdicts < 1:
        raise InputError(f"the verdict budget must be >= 1, got {verdicts}")
    if max_rounds < 1:
        raise InputError(f"max_rounds must be >= 1, got {max_rounds}")
    unknown = [c for c in classes if c not in policy.classes]
    if unknown:
        raise InputError(f"the policy has no class {', '.join(unknown)}")
    ladders = {c: ClassLadder(exception_type=c, gate=policy.gates_for(c), mode=Mode.shadow) for c in classes}
    for number, stage in enumerate(STAGES):
        running = [c for c in classes if ladders[c].mode == stage or every_stage]
        got: dict[str, list[bool]] = {c: [] for c in running}
        accurate: dict[str, list[bool]] = {c: [] for c in running}
        rounds = 0
        while running and rounds < max_rounds:
            need = {c: _budget(ladders[c].gate, verdicts) - len(got[c]) for c in running}
            need = {c: n for c, n in need.items() if n > 0}
            if not need:
                break
            round_seed = seed + ROUND_SEED_STEP * (number * max_rounds + rounds)
            instances = [i for c, n in need.items() for i in make(c, seed=round_seed, count=n)]
            for row, verdict in runner(instances, stage, f"ladder-{stage}-{rounds}"):
                accurate[row.exception_type].append(row.score == 1.0)
                if verdict is not None:
                    got[row.exception_type].append(verdict)
            rounds += 1
        for c in running:
            ladder = ladders[c]
            evidence, allowed, why = judge(got[c][:_budget(ladder.gate, verdicts)], ladder.gate, stage)
            acc = accurate[c]
            ladder.stages.append(StageResult(stage=stage, cases=len(acc), rounds=rounds, evidence=evidence,
                                             allowed=allowed, why=why,
                                             accuracy=sum(acc) / len(acc) if acc else None))
            if allowed and ladder.mode == stage:
                ladder.mode = stage.next
    return Ladder(seed=seed, verdicts=verdicts, classes=ladders)


def _budget(gate: GateConfig, verdicts: int | None) -> int:
    return gate.min_cases if verdicts is None else verdicts


# --- the real stage runner: an eval run, then the gates' verdicts from the trace store ----------

def gold_verdicts(traces: Path, rows: Sequence[CaseResult], instances: Sequence[Instance]) -> list[VerdictEvent]:
    """The simulated human's verdict on each shadow case of `rows`: its proposed writes and outcome
    against the gold (the same write tools with the gold's key arguments, each once, and the same
    outcome), as verdicts to record beside human log comparisons."""
    gold = {i.instance_id: i.gold for i in instances}
    cases = traced_cases(traces)
    out = []
    for row in rows:
        case = cases.get(row.case_id or "")
        if case is None or case.status not in ("proposed", "resolved", "escalated", "failed"):
            continue
        g = gold[row.instance_id]
        writes = [{"tool": w.tool, "args": w.args} for w in case.writes]
        matched = matched_writes(writes, g.actions)
        needed = sum(a.writes for a in g.actions)
        problems = []
        if not all(matched):
            problems.append("writes the gold does not have: " + ", ".join(
                w["tool"] for w, ok in zip(writes, matched, strict=True) if not ok))
        if sum(matched) < needed:
            problems.append(f"{needed - sum(matched)} gold write(s) missing")
        if case.outcome != g.outcome:
            problems.append(f"outcome {case.outcome} vs the gold's {g.outcome}")
        out.append(VerdictEvent(
            case_id=case.case_id, exception_type=case.exception_type, autonomy_mode=case.mode,
            source="human_log", correct=not problems, reason="; ".join(problems) or "same writes and outcome",
            actor=COMPARE_ACTOR, details={"instance_id": row.instance_id, "human_actor": "gold"},
            case_received_at=case.received_at))
    return out


def verdicts_of(traces: Path, rows: Sequence[CaseResult], stage: Mode) -> list[tuple[CaseResult, bool | None]]:
    """Each row with the gates' verdict on its case in `stage` (None if it has none)."""
    found: dict[str, CaseVerdict] = {v.case_id: v for v in case_verdicts(traces) if v.mode == stage}
    return [(r, found[r.case_id].correct if r.case_id in found else None) for r in rows]


def record(traces: Path, verdicts: Sequence[VerdictEvent]) -> None:
    """Write verdicts to the trace folder, where the gates read them."""
    from opsagent.agents.tracing.parquet import ParquetExporter

    if verdicts:
        with ParquetExporter(traces) as exporter:
            exporter.export(list(verdicts))
