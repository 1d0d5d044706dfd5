"""Eval metrics over result rows (one row per instance x trial x configuration), per class and overall.

Definitions (every rate's denominator is the rows of the group unless said otherwise):

- accuracy: share of rows that scored 1.0 (`evals.scoring`: end state, required actions and
  outcome all as the gold), escalations and approved cases included.
- automation: the one meaning used everywhere (console, audit, README): cases resolved with no
  approval asked, of every case; a case still open (here: unfinished at the timeout) counts as
  not automated and is shown apart (`open`). An eval knows the gold, so it also requires the
  case to be correct (score 1.0). A correct escalation is not automation: it hands the case to a
  human.
- precision of autonomous writes: over every write that ran without an approval and succeeded,
  the share that matches a gold action of its instance (same tool and key arguments).
- escalation precision: of the rows the agent escalated, the share whose gold outcome is
  `escalated`; escalation recall: of the rows whose gold outcome is `escalated`, the share the
  agent escalated (the target: >= 95 % of must-escalate instances escalated). A shadow-mode
  `proposed` row counts with the outcome it proposed.
- human workload: approvals asked per case (`approvals_per_case`), beside `needed_human`, the
  share of cases a person had to touch (an approval, or the case not resolved).
- unsupervised high-risk: executed high-risk actions without an approval of exactly their
  arguments (`agents.tracing.report.UNSUPERVISED_HIGH_RISK`, per case); must be 0.
- latency: receipt to the last executed write's finish, or to the final status when nothing was
  written; p50/p95 by linear interpolation (DuckDB's `quantile_cont`), over finished rows: those
  in a final status (`FINAL`: resolved, escalated, failed, or `proposed`, where a shadow-mode case
  ends with its writes only proposed) or ended by an error; not those still open at the timeout.
- planner calls and tokens per case: means over rows, from the `planner_calls` trace view.
- pass^k (tau-bench): the mean over instances of C(c, k) / C(n, k), c of whose n trials scored
  1.0: the chance that k trials drawn from the n all succeed.

Rates carry a Wilson score interval (95 %), which stays inside [0, 1] and is honest for small n
and for rates near 0 or 1, where the normal approximation is not.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from pydantic import BaseModel, Field

from opsagent.agents.case import CaseStatus
from opsagent.policy.stats import wilson

FINAL = tuple(s.value for s in CaseStatus if s.final)
"""The statuses a case ends in: resolved, escalated, failed, proposed (shadow mode)."""
AGENT_OUTCOMES = ("resolved", "escalated", "proposed", "failed", "open")


class CaseResult(BaseModel):
    """One instance run once under one configuration: how it ended, its score, what it cost."""

    run_id: str
    config: str = Field(description="Name of the configuration under evaluation.")
    trial: int = Field(description="0-based trial number.")
    instance_id: str
    exception_type: str
    variant: str
    case_id: str | None = Field(None, description="None if the submission itself failed.")
    status: str = Field(description="The case's last status; `timeout` or `error` if it never got one.")
    outcome: str | None = Field(None, description="resolved | escalated (for a shadow-mode `proposed` "
                                "case: the outcome it proposed), else None.")
    reason: str | None = Field(None, description="The case's last status reason (the planner's final word).")
    gold_outcome: str
    score: float
    outcome_ok: bool
    state_ok: bool
    missing_actions: list[str] = Field(default_factory=list)
    failed_assertions: list[str] = Field(default_factory=list)
    steps: int = Field(0, description="Tool steps the case took (finish not counted).")
    approvals_requested: int = 0
    approvals_approved: int = 0
    approvals_rejected: int = 0
    autonomous_writes: int = Field(0, description="Writes that ran without approval and succeeded.")
    autonomous_writes_correct: int = Field(0, description="Of those, the ones matching a gold action.")
    unsupervised_high_risk: int = 0
    latency_s: float | None = None
    planner_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    received_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None

    @property
    def needed_human(self) -> bool:
        """An approval was asked, or the case was not resolved (a human has to take it over; a
        `proposed` case's writes are left to one)."""
        return self.approvals_requested > 0 or self.status != "resolved"

    @property
    def automated(self) -> bool:
        return self.score == 1.0 and self.status == "resolved" and self.approvals_requested == 0

    @property
    def finished(self) -> bool:
        """It ended: a final status (`FINAL`, shadow mode's `proposed` included) or an error."""
        return self.agent_outcome != "open"

    @property
    def agent_outcome(self) -> str:
        """resolved | escalated | proposed (shadow mode) | failed (failed or an error) | open (never
        finished)."""
        if self.status in FINAL:
            return self.status
        return "failed" if self.status == "error" else "open"


class EvalRun(BaseModel):
    """Everything one `opsagent eval` measured."""

    run_id: str
    eval_set: str | None = None
    configs: list[str]
    models: dict[str, str | None] = Field(default_factory=dict, description="Config -> planner model.")
    trials: int
    concurrency: int
    instances: int
    classes: list[str]
    started_at: datetime
    wall_s: float
    rows: list[CaseResult]


class Rate(BaseModel):
    """hits / n with its Wilson 95 % interval (all None when n is 0)."""

    hits: int
    n: int
    value: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, hits: int, n: int) -> Rate:
        if n == 0:
            return cls(hits=0, n=0, value=None, low=None, high=None)
        low, high = wilson(hits, n)
        return cls(hits=hits, n=n, value=hits / n, low=low, high=high)


class GroupMetrics(BaseModel):
    """The metrics of one group of rows (a class, or everything) under one configuration."""

    rows: int
    instances: int
    trials: int = Field(description="The fewest trials any instance of the group had.")
    accuracy: Rate
    automation: Rate
    autonomous_write_precision: Rate
    escalation_precision: Rate
    escalation_recall: Rate
    needed_human: Rate
    approvals_per_case: float | None = Field(
        None, description="Human workload: approvals asked, per case (mean over rows).")
    open: int = Field(0, description="Rows that never finished (in the automation denominator).")
    unsupervised_high_risk: int
    latency_p50_s: float | None
    latency_p95_s: float | None
    planner_calls_per_case: float | None
    prompt_tokens_per_case: float | None
    completion_tokens_per_case: float | None
    pass_k: dict[int, float] = Field(description="k -> pass^k for k = 1 .. trials.")
    confusion: dict[str, dict[str, int]] = Field(description="gold outcome -> agent outcome -> rows.")


class ConfigMetrics(BaseModel):
    config: str
    overall: GroupMetrics
    by_class: dict[str, GroupMetrics]


class Target(BaseModel):
    """A target of the issue, and whether the measured value meets it."""

    name: str
    goal: str
    measured: str
    met: bool | None = Field(description="None when there was nothing to measure.")


def pass_hat_k(successes: dict[str, tuple[int, int]], k: int) -> float | None:
    """tau-bench's pass^k: mean over instances of C(c, k) / C(n, k) for (c successes, n trials).
    None if some instance has fewer than k trials."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not successes or any(n < k for _, n in successes.values()):
        return None
    return sum(math.comb(c, k) / math.comb(n, k) for c, n in successes.values()) / len(successes)


def quantile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile with linear interpolation between order statistics (None if empty)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def group_metrics(rows: Sequence[CaseResult]) -> GroupMetrics:
    """Every metric of the module docstring over `rows` (one configuration's)."""
    per_instance: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        per_instance[r.instance_id].append(r.score == 1.0)
    trials = min((len(v) for v in per_instance.values()), default=0)
    counts = {i: (sum(v), len(v)) for i, v in per_instance.items()}
    gold_esc = [r for r in rows if r.gold_outcome == "escalated"]
    agent_esc = [r for r in rows if r.outcome == "escalated"]
    latencies = [r.latency_s for r in rows if r.latency_s is not None and r.finished]
    confusion = {g: {a: 0 for a in AGENT_OUTCOMES} for g in ("resolved", "escalated")}
    for r in rows:
        confusion.setdefault(r.gold_outcome, {a: 0 for a in AGENT_OUTCOMES})[r.agent_outcome] += 1
    n = len(rows)
    return GroupMetrics(
        rows=n, instances=len(per_instance), trials=trials,
        accuracy=Rate.of(sum(r.score == 1.0 for r in rows), n),
        automation=Rate.of(sum(r.automated for r in rows), n),
        autonomous_write_precision=Rate.of(sum(r.autonomous_writes_correct for r in rows),
                                           sum(r.autonomous_writes for r in rows)),
        escalation_precision=Rate.of(sum(r.gold_outcome == "escalated" for r in agent_esc), len(agent_esc)),
        escalation_recall=Rate.of(sum(r.outcome == "escalated" for r in gold_esc), len(gold_esc)),
        needed_human=Rate.of(sum(r.needed_human for r in rows), n),
        approvals_per_case=_mean(r.approvals_requested for r in rows),
        open=sum(not r.finished for r in rows),
        unsupervised_high_risk=sum(r.unsupervised_high_risk for r in rows),
        latency_p50_s=quantile(latencies, 0.5), latency_p95_s=quantile(latencies, 0.95),
        planner_calls_per_case=_mean(r.planner_calls for r in rows),
        prompt_tokens_per_case=_mean(r.prompt_tokens for r in rows),
        completion_tokens_per_case=_mean(r.completion_tokens for r in rows),
        pass_k={k: p for k in range(1, trials + 1) if (p := pass_hat_k(counts, k)) is not None},
        confusion=confusion,
    )


def summarize(rows: Sequence[CaseResult]) -> dict[str, ConfigMetrics]:
    """Configuration -> its overall and per-class metrics (configurations in first-seen order)."""
    by_config: dict[str, list[CaseResult]] = defaultdict(list)
    for r in rows:
        by_config[r.config].append(r)
    out = {}
    for config, mine in by_config.items():
        classes: dict[str, list[CaseResult]] = defaultdict(list)
        for r in mine:
            classes[r.exception_type].append(r)
        out[config] = ConfigMetrics(config=config, overall=group_metrics(mine),
                                    by_class={c: group_metrics(v) for c, v in sorted(classes.items())})
    return out


def targets(m: GroupMetrics) -> list[Target]:
    """The issue's targets, checked on one configuration's overall metrics."""
    auto, prec, recall = m.automation, m.autonomous_write_precision, m.escalation_recall
    return [
        Target(name="automation", goal=">= 30 % of all exceptions resolved correctly with no human",
               measured=format_rate(auto), met=None if auto.value is None else auto.value >= 0.30),
        Target(name="autonomous write precision", goal=">= 99 %, Wilson 95 % lower bound >= 97 %",
               measured=format_rate(prec),
               met=None if prec.value is None else prec.value >= 0.99 and (prec.low or 0) >= 0.97),
        Target(name="escalation recall", goal=">= 95 % of must-escalate instances escalated",
               measured=format_rate(recall), met=None if recall.value is None else recall.value >= 0.95),
        Target(name="unsupervised high-risk actions", goal="0", measured=str(m.unsupervised_high_risk),
               met=m.unsupervised_high_risk == 0),
    ]


def format_rate(rate: Rate) -> str:
    """`41.7 % (25/60, 95 % CI 29.9-54.4)`, or `n/a (0/0)`."""
    if rate.value is None:
        return "n/a (0/0)"
    return (f"{100 * rate.value:.1f} % ({rate.hits}/{rate.n}, 95 % CI "
            f"{100 * (rate.low or 0):.1f}-{100 * (rate.high or 0):.1f})")


def _mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None
