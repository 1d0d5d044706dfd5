"""How far the planner's confidence separates its right autonomous writes from its wrong ones.

For every autonomous write of an eval run (executed, succeeded, no approval: the writes
`autonomous_write_precision` counts) the planner's confidence in choosing that tool
(`planner_calls.confidence`, agents/confidence.py) and whether it matched a gold action of its
instance. `sweep` then answers, for each candidate floor, what a class policy's `min_confidence`
at that floor would have done to the run: the writes still autonomous and their precision (with
its Wilson interval), and the automated cases kept (every autonomous write of the case at or
above the floor). It is an offline estimate: a held write would have gone to a person, and what
the case did next is not simulated; choose the floor on a training set, then measure it on the
held-out one.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from opsagent.agents.tracing.views import query, sql_list
from opsagent.evals.catalogue import Instance
from opsagent.evals.metrics import CaseResult, Rate
from opsagent.evals.runner import matched_writes

FLOORS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


class ScoredWrite(BaseModel):
    """One autonomous write of a run, its planner confidence and whether the gold has it."""

    config: str
    case_id: str
    instance_id: str
    exception_type: str = ""
    step: int
    tool: str
    confidence: float | None = Field(description="None: the engine gave no log-probabilities.")
    correct: bool
    decided_by: str | None = Field(None, description="`rule` (the playbook left one step) or `model` "
                                   "(among `candidates`); None in traces older than schema 7.")
    candidates: int | None = Field(None, description="How many candidates the decision was among.")


class FloorEffect(BaseModel):
    """What `min_confidence = floor` would have left autonomous in a run."""

    floor: float
    precision: Rate = Field(description="Correct writes among those at or above the floor.")
    held: int = Field(description="Autonomous writes the floor would have held for a human.")
    held_correct: int = Field(description="... of which matched the gold (work a person now does).")
    automated: int = Field(description="Automated cases whose every autonomous write clears the floor.")
    automated_before: int


def scored_writes(traces: Path | str, rows: Sequence[CaseResult],
                  instances: Iterable[Instance]) -> list[ScoredWrite]:
    """Every autonomous write of `rows`' cases with its confidence and correctness (as
    `runner.matched_writes` judges them: each gold action matches one write, in step order)."""
    gold = {i.instance_id: i.gold.actions for i in instances}
    by_case = {r.case_id: r for r in rows if r.case_id}
    if not by_case:
        return []
    ids = sql_list(by_case)
    _, found = query(traces, f"""
        WITH conf AS (
          SELECT case_id, step, arg_max(confidence, started_at) AS confidence,
                 arg_max(decided_by, started_at) AS decided_by,
                 arg_max(candidates, started_at) AS candidates FROM planner_calls
          WHERE case_id IN {ids} GROUP BY ALL),
        held AS (SELECT DISTINCT case_id, step FROM approvals WHERE case_id IN {ids})
        SELECT a.case_id, a.step, a.tool, a.args, c.confidence, c.decided_by, c.candidates
        FROM actions a LEFT JOIN conf c USING (case_id, step) ANTI JOIN held h USING (case_id, step)
        WHERE a.case_id IN {ids} AND a.writes AND a.executed AND NOT a.dry_run AND a.error IS NULL
        ORDER BY a.case_id, a.step""")
    per_case: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for case_id, step, tool, args, confidence, decided_by, candidates in found:
        per_case[case_id].append(dict(step=step, tool=tool, confidence=confidence, decided_by=decided_by,
                                      candidates=_count(candidates),
                                      args=json.loads(args) if isinstance(args, str) else (args or {})))
    out = []
    for case_id, writes in per_case.items():
        row = by_case[case_id]
        for w, correct in zip(writes, matched_writes(writes, gold.get(row.instance_id, [])), strict=True):
            out.append(ScoredWrite(config=row.config, case_id=case_id, instance_id=row.instance_id,
                                   exception_type=row.exception_type,
                                   step=w["step"], tool=w["tool"], confidence=w["confidence"], correct=correct,
                                   decided_by=w["decided_by"], candidates=w["candidates"]))
    return out


def sweep(writes: Sequence[ScoredWrite], rows: Sequence[CaseResult],
          floors: Iterable[float] = FLOORS) -> list[FloorEffect]:
    """The effect of each floor on the writes and automated cases of one configuration's run."""
    automated = {r.case_id for r in rows if r.automated}
    lowest: dict[str, float] = {}
    for w in writes:
        lowest[w.case_id] = min(lowest.get(w.case_id, 1.0), -1.0 if w.confidence is None else w.confidence)
    effects = []
    for floor in floors:
        kept = [w for w in writes if w.confidence is not None and w.confidence >= floor]
        held = [w for w in writes if not (w.confidence is not None and w.confidence >= floor)]
        effects.append(FloorEffect(
            floor=floor, precision=Rate.of(sum(w.correct for w in kept), len(kept)), held=len(held),
            held_correct=sum(w.correct for w in held),
            automated=sum(lowest.get(c, 1.0) >= floor for c in automated), automated_before=len(automated)))
    return effects


def render_sweep(config: str, writes: Sequence[ScoredWrite], effects: Sequence[FloorEffect]) -> str:
    """The sweep as a terminal table, with the confidence of right and wrong writes."""
    right = sorted(w.confidence for w in writes if w.correct and w.confidence is not None)
    wrong = sorted(w.confidence for w in writes if not w.correct and w.confidence is not None)
    lines = [f"autonomous writes by planner confidence ({config}): {len(right)} right, median "
             f"{_median(right)}; {len(wrong)} wrong, median {_median(wrong)}",
             "  min_confidence  writes kept  precision (Wilson 95 %)     held (right)  automated kept"]
    for e in effects:
        p = e.precision
        prec = "n/a" if p.value is None else f"{p.value:6.1%} ({p.low:.1%}-{p.high:.1%})"
        lines.append(f"  {e.floor:<14.2f}  {p.n:<11}  {prec:<26}  {e.held:>4} ({e.held_correct:>3})    "
                     f"{e.automated}/{e.automated_before}")
    return "\n".join(lines)


def _count(candidates: Any) -> int | None:
    """How many candidates a traced `planner_calls.candidates` (JSON text, or a list) holds."""
    if candidates is None:
        return None
    return len(json.loads(candidates) if isinstance(candidates, str) else candidates)


class DeciderStats(BaseModel):
    """The decisions of one decider in a run: how many, and the precision of its autonomous writes."""

    decided_by: str = Field(description="`rule`: the playbook's rule or a single candidate, no model; "
                            "`model`: the model among several candidates; `unknown`: traced before schema 7.")
    decisions: int = Field(description="Planner steps it decided (reads, writes and finishes).")
    mean_candidates: float | None = Field(description="Candidates per decision, on average.")
    autonomous_writes: Rate = Field(description="Its autonomous writes that match the gold.")


def deciders(traces: Path | str, rows: Sequence[CaseResult], writes: Sequence[ScoredWrite]) -> list[DeciderStats]:
    """Volume and precision per decider over one configuration's cases (`rows`), so the model's own
    contribution is visible beside what the playbook decided alone."""
    ids = [r.case_id for r in rows if r.case_id]
    counts: dict[str, list[int | None]] = defaultdict(list)
    if ids:
        _, found = query(traces, f"""
            SELECT coalesce(decided_by, 'unknown'), candidates FROM planner_calls
            WHERE case_id IN {sql_list(ids)}""")
        for who, candidates in found:
            counts[who].append(_count(candidates))
    out = []
    for who in sorted(set(counts) | {w.decided_by or "unknown" for w in writes}):
        sizes = [n for n in counts.get(who, []) if n is not None]
        mine = [w for w in writes if (w.decided_by or "unknown") == who]
        out.append(DeciderStats(decided_by=who, decisions=len(counts.get(who, [])),
                                mean_candidates=sum(sizes) / len(sizes) if sizes else None,
                                autonomous_writes=Rate.of(sum(w.correct for w in mine), len(mine))))
    return out


def render_deciders(config: str, stats: Sequence[DeciderStats]) -> str:
    """The per-decider table for the terminal."""
    lines = [f"who decided ({config}):",
             "  decided_by  decisions  candidates/decision  autonomous writes right (Wilson 95 %)"]
    for s in stats:
        p = s.autonomous_writes
        prec = "n/a" if p.value is None else f"{p.hits}/{p.n} = {p.value:.1%} ({p.low:.1%}-{p.high:.1%})"
        mean = "n/a" if s.mean_candidates is None else f"{s.mean_candidates:.1f}"
        lines.append(f"  {s.decided_by:<10}  {s.decisions:<9}  {mean:<19}  {prec}")
    return "\n".join(lines)


def _median(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    mid = len(values) // 2
    value = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    return f"{value:.3f}"


# --- calibration (fitted on training runs) and per-class floors ---------------------------------

class Calibration(BaseModel):
    """Platt scaling of the planner's probability of its choice: P(right) = sigmoid(a * logit(p) + b),
    fitted on the model-decided autonomous writes of a training run (a rule's decision is not the
    model's and is never held)."""

    a: float
    b: float
    n: int = Field(description="Writes it was fitted on.")
    right: int = Field(description="... of which right.")

    def __call__(self, p: float) -> float:
        return _sigmoid(self.a * _logit(p) + self.b)

    def raw_floor(self, calibrated: float) -> float:
        """The planner probability whose calibrated value is `calibrated` (a > 0: monotone), clipped
        to (0, 1]: the `min_confidence` a policy states for that calibrated floor."""
        if self.a <= 0:
            return 1.0
        return min(1.0, max(1e-6, _sigmoid((_logit(calibrated) - self.b) / self.a)))


def model_writes(writes: Sequence[ScoredWrite]) -> list[ScoredWrite]:
    """The writes the model chose among candidates, with a confidence."""
    return [w for w in writes if w.confidence is not None and w.decided_by != "rule"]


def fit_platt(writes: Sequence[ScoredWrite], *, l2: float = 1e-3, steps: int = 50) -> Calibration:
    """Fit `Calibration` by Newton's method on the log-loss (a little L2 keeps a separable set finite).
    ValueError with fewer than 2 model-decided writes, or if all are right or all wrong."""
    data = [(_logit(w.confidence), 1.0 if w.correct else 0.0) for w in model_writes(writes)]
    right = int(sum(y for _, y in data))
    if len(data) < 2 or right in (0, len(data)):
        raise ValueError(f"calibration needs model-decided writes both right and wrong, got {right}/{len(data)}")
    a, b = 1.0, 0.0
    for _ in range(steps):
        ga = gb = haa = hab = hbb = 0.0
        for x, y in data:
            p = _sigmoid(a * x + b)
            ga, gb = ga + (p - y) * x, gb + (p - y)
            w = p * (1 - p)
            haa, hab, hbb = haa + w * x * x, hab + w * x, hbb + w
        ga, haa, hbb = ga + l2 * a, haa + l2, hbb + l2
        det = haa * hbb - hab * hab
        if det <= 1e-12:
            break
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a - da, b - db
        if abs(da) + abs(db) < 1e-9:
            break
    return Calibration(a=a, b=b, n=len(data), right=right)


class ClassFloor(BaseModel):
    """The floor chosen for one class on training data, and what it did there."""

    exception_type: str
    min_confidence: float | None = Field(description="Raw planner probability for the policy; None: no "
                                         "floor needed (the class already meets the target).")
    calibrated: float | None = Field(description="The same floor as a calibrated probability of being right.")
    precision_before: Rate
    precision_after: Rate
    held: int = Field(description="Training writes the floor holds for a human.")


def class_floors(writes: Sequence[ScoredWrite], calibration: Calibration, *,
                 target: float = 0.95) -> list[ClassFloor]:
    """Per class, the lowest floor on the calibrated confidence at which the class's autonomous
    writes of the training run reach `target` precision; where none does, a floor of 1.0 holds
    every write the model chose (a rule's decisions still run)."""
    out = []
    for name in sorted({w.exception_type for w in writes}):
        mine = [w for w in writes if w.exception_type == name]
        before = Rate.of(sum(w.correct for w in mine), len(mine))
        if before.value is not None and before.value >= target:
            out.append(ClassFloor(exception_type=name, min_confidence=None, calibrated=None,
                                  precision_before=before, precision_after=before, held=0))
            continue
        chosen = 1.0
        for floor in sorted({w.confidence for w in model_writes(mine)}):
            kept = [w for w in mine if _confidence(w) >= floor]
            if kept and sum(w.correct for w in kept) / len(kept) >= target:
                chosen = floor
                break
        kept = [w for w in mine if _confidence(w) >= chosen]
        out.append(ClassFloor(exception_type=name, min_confidence=chosen, calibrated=calibration(chosen),
                              precision_before=before, precision_after=Rate.of(sum(w.correct for w in kept), len(kept)),
                              held=len(mine) - len(kept)))
    return out


def apply_floors(writes: Sequence[ScoredWrite], floors: Sequence[ClassFloor]) -> tuple[Rate, int]:
    """Precision of the writes still autonomous under `floors` (offline, as `sweep`), and how many held."""
    by = {f.exception_type: f.min_confidence for f in floors}
    kept = [w for w in writes if by.get(w.exception_type) is None or _confidence(w) >= by[w.exception_type]]
    return Rate.of(sum(w.correct for w in kept), len(kept)), len(writes) - len(kept)


def _confidence(w: ScoredWrite) -> float:
    if w.decided_by == "rule":
        return 1.0
    return -1.0 if w.confidence is None else w.confidence


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def confidence_summary(traces, rows, instances) -> str:
    """Per configuration, what a `min_confidence` floor would do to its autonomous writes (only
    for configurations whose planner reported confidences)."""
    parts = []
    for config in dict.fromkeys(r.config for r in rows):
        mine = [r for r in rows if r.config == config]
        writes = scored_writes(traces, mine, instances)
        parts.append(render_deciders(config, deciders(traces, mine, writes)))
        if any(w.confidence is not None for w in writes):
            parts.append(render_sweep(config, writes, sweep(writes, mine)))
    return "\n\n".join(parts)
