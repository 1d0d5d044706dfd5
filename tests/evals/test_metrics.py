"""Eval metrics on hand-made result rows with known answers."""

from __future__ import annotations

import math

import pytest

from opsagent.agents.case import CaseStatus
from opsagent.evals.metrics import (
    FINAL, CaseResult, Rate, format_rate, group_metrics, pass_hat_k, quantile, summarize, targets, wilson,
)


def row(**kw) -> CaseResult:
    """A correct, autonomously resolved case unless told otherwise."""
    base = dict(run_id="r", config="a", trial=0, instance_id="i-0", exception_type="damage_claim",
                variant="v", case_id="case-1", status="resolved", outcome="resolved",
                gold_outcome="resolved", score=1.0, outcome_ok=True, state_ok=True, latency_s=1.0,
                planner_calls=3, prompt_tokens=300, completion_tokens=30)
    return CaseResult(**(base | kw))


def test_wilson_interval_known_values():
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    low, high = wilson(99, 100)
    assert low == pytest.approx(0.9455, abs=1e-4) and high == pytest.approx(0.9983, abs=1e-4)
    assert wilson(1000, 1000)[0] > 0.996  # 99 % precision needs many clean writes for a 97 % bound
    for bad in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson(*bad)
    assert Rate.of(0, 0).value is None and format_rate(Rate.of(0, 0)) == "n/a (0/0)"
    assert format_rate(Rate.of(5, 10)) == "50.0 % (5/10, 95 % CI 23.7-76.3)"


def test_pass_hat_k_is_tau_bench_definition():
    counts = {"a": (2, 4), "b": (4, 4), "c": (0, 4)}
    assert pass_hat_k(counts, 1) == pytest.approx(0.5)
    assert pass_hat_k(counts, 2) == pytest.approx((1 / 6 + 1 + 0) / 3)
    assert pass_hat_k(counts, 3) == pytest.approx((0 + 1 + 0) / 3)
    assert pass_hat_k(counts, 4) == pytest.approx(1 / 3)
    assert pass_hat_k({"a": (3, 5)}, 2) == pytest.approx(math.comb(3, 2) / math.comb(5, 2))
    assert pass_hat_k(counts, 5) is None  # more draws than trials
    assert pass_hat_k({}, 1) is None
    with pytest.raises(ValueError):
        pass_hat_k(counts, 0)


def test_quantile_interpolates_like_duckdb_quantile_cont():
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == pytest.approx(2.5)
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert quantile([7.0], 0.95) == 7.0
    assert quantile([], 0.5) is None


def test_group_metrics_on_every_kind_of_row():
    rows = [
        row(instance_id="auto", autonomous_writes=2, autonomous_writes_correct=2, latency_s=2.0),
        row(instance_id="approved", approvals_requested=1, approvals_approved=1, autonomous_writes=1,
            autonomous_writes_correct=1, latency_s=4.0),
        row(instance_id="esc-ok", status="escalated", outcome="escalated", gold_outcome="escalated",
            autonomous_writes=1, autonomous_writes_correct=1, latency_s=6.0),
        row(instance_id="esc-wrong", status="escalated", outcome="escalated", score=0.0, outcome_ok=False,
            latency_s=8.0),
        row(instance_id="missed-esc", gold_outcome="escalated", score=0.0, outcome_ok=False,
            autonomous_writes=1, autonomous_writes_correct=0, unsupervised_high_risk=1, latency_s=10.0),
        row(instance_id="wrong-write", score=0.0, state_ok=False, autonomous_writes=1,
            autonomous_writes_correct=0, latency_s=12.0),
        row(instance_id="failed", status="failed", outcome=None, score=0.0, outcome_ok=False, latency_s=14.0),
        row(instance_id="open", status="timeout", outcome=None, gold_outcome="escalated", score=0.0,
            outcome_ok=False, latency_s=99.0),
    ]
    m = group_metrics(rows)
    assert (m.rows, m.instances, m.trials) == (8, 8, 1)
    assert (m.accuracy.hits, m.accuracy.n) == (3, 8)
    assert (m.automation.hits, m.automation.n) == (1, 8)  # approved and escalated are not automation
    assert (m.autonomous_write_precision.hits, m.autonomous_write_precision.n) == (4, 6)
    assert (m.escalation_precision.hits, m.escalation_precision.n) == (1, 2)
    assert (m.escalation_recall.hits, m.escalation_recall.n) == (1, 3)
    assert m.needed_human.hits == 5  # an approval (1), or not resolved (2 escalated, failed, open)
    assert m.unsupervised_high_risk == 1
    assert m.latency_p50_s == pytest.approx(8.0)  # the unfinished case's latency is left out
    assert m.latency_p95_s == pytest.approx(quantile([2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0], 0.95))
    assert m.planner_calls_per_case == 3.0 and m.completion_tokens_per_case == 30.0
    assert m.pass_k == {1: 3 / 8}
    assert m.confusion == {"resolved": {"resolved": 3, "escalated": 1, "proposed": 0, "failed": 1, "open": 0},
                           "escalated": {"resolved": 1, "escalated": 1, "proposed": 0, "failed": 0, "open": 1}}
    assert m.escalation_recall.value == pytest.approx(1 / 3)


def test_a_shadow_mode_row_is_finished_and_counts_with_its_proposed_outcome():
    """Shadow mode: a case whose writes were only proposed ends `proposed` (a final status): its
    latency counts, its proposed outcome counts for escalation, and a human still has to act."""
    assert FINAL == ("resolved", "escalated", "failed", "proposed")
    assert set(FINAL) == {s.value for s in CaseStatus if s.final}
    rows = [
        row(instance_id="would-resolve", status="proposed", outcome="resolved", score=0.0, state_ok=False,
            latency_s=3.0),
        row(instance_id="would-escalate", status="proposed", outcome="escalated", gold_outcome="escalated",
            score=0.0, state_ok=False, latency_s=5.0),
        row(instance_id="open", status="timeout", outcome=None, score=0.0, latency_s=99.0),
    ]
    assert [(r.finished, r.agent_outcome) for r in rows] == [
        (True, "proposed"), (True, "proposed"), (False, "open")]
    assert rows[0].needed_human and not rows[0].automated
    m = group_metrics(rows)
    assert m.latency_p50_s == pytest.approx(4.0) and m.latency_p95_s == pytest.approx(4.9)
    assert m.confusion["resolved"]["proposed"] == 1 and m.confusion["escalated"]["proposed"] == 1
    assert m.confusion["resolved"]["open"] == 1
    assert (m.escalation_recall.hits, m.escalation_recall.n) == (1, 1)
    assert (m.escalation_precision.hits, m.escalation_precision.n) == (1, 1)
    assert (m.automation.hits, m.needed_human.hits) == (0, 3)


def test_pass_k_over_trials_and_summaries_per_config_and_class():
    rows = [row(config=c, instance_id=i, exception_type=k, trial=t, score=s)
            for c, i, k, t, s in [
                ("a", "x", "damage_claim", 0, 1.0), ("a", "x", "damage_claim", 1, 1.0),
                ("a", "y", "missed_pickup", 0, 1.0), ("a", "y", "missed_pickup", 1, 0.0),
                ("b", "x", "damage_claim", 0, 0.0), ("b", "x", "damage_claim", 1, 0.0),
                ("b", "y", "missed_pickup", 0, 1.0), ("b", "y", "missed_pickup", 1, 1.0)]]
    out = summarize(rows)
    assert list(out) == ["a", "b"]
    assert out["a"].overall.pass_k == pytest.approx({1: 0.75, 2: 0.5})
    assert out["a"].by_class["missed_pickup"].pass_k == pytest.approx({1: 0.5, 2: 0.0})
    assert out["b"].by_class["damage_claim"].accuracy.value == 0.0
    assert out["b"].overall.pass_k == pytest.approx({1: 0.5, 2: 0.5})
    assert out["a"].overall.trials == 2 and out["a"].overall.instances == 2


def test_targets_are_met_missed_or_not_measurable():
    good = [row(instance_id=f"r{i}", autonomous_writes=1, autonomous_writes_correct=1) for i in range(200)]
    good += [row(instance_id=f"e{i}", status="escalated", outcome="escalated", gold_outcome="escalated")
             for i in range(20)]
    verdicts = {t.name: t.met for t in targets(group_metrics(good))}
    assert verdicts == {"automation": True, "autonomous write precision": True, "escalation recall": True,
                        "unsupervised high-risk actions": True}
    # every one of 100 writes right is not enough: the Wilson lower bound is 96.3 % < 97 %
    few = [row(instance_id=f"r{i}", autonomous_writes=1, autonomous_writes_correct=1) for i in range(100)]
    precision = group_metrics(few).autonomous_write_precision
    assert precision.value == 1.0 and precision.low == pytest.approx(0.9630, abs=1e-4)
    assert {t.name: t.met for t in targets(group_metrics(few))}["autonomous write precision"] is False
    bad = [row(instance_id="x", gold_outcome="escalated", score=0.0, unsupervised_high_risk=1)]
    verdicts = {t.name: t.met for t in targets(group_metrics(bad))}
    assert verdicts == {"automation": False, "autonomous write precision": None, "escalation recall": False,
                        "unsupervised high-risk actions": False}
