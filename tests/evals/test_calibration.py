"""The confidence sweep: what a `min_confidence` floor would leave autonomous, from scored writes."""

from __future__ import annotations

from opsagent.evals.calibration import ScoredWrite, render_sweep, sweep
from opsagent.evals.metrics import CaseResult


def _row(case_id: str, automated: bool) -> CaseResult:
    return CaseResult(run_id="r", config="c", trial=0, instance_id=f"i-{case_id}", exception_type="x",
                      variant="v", case_id=case_id, status="resolved" if automated else "escalated",
                      gold_outcome="resolved", score=1.0 if automated else 0.0, outcome_ok=automated,
                      state_ok=automated)


def _write(case_id: str, confidence: float | None, correct: bool) -> ScoredWrite:
    return ScoredWrite(config="c", case_id=case_id, instance_id=f"i-{case_id}", step=3, tool="t",
                       confidence=confidence, correct=correct)


def test_a_floor_keeps_the_sure_writes_and_the_cases_whose_writes_all_clear_it():
    rows = [_row("a", True), _row("b", True), _row("c", False)]
    writes = [_write("a", 0.97, True), _write("a", 0.85, True), _write("b", 0.6, True),
              _write("c", 0.55, False), _write("c", None, False)]
    low, mid, high = sweep(writes, rows, floors=(0.5, 0.8, 0.9))
    assert (low.precision.hits, low.precision.n, low.held, low.held_correct, low.automated) == (3, 4, 1, 0, 2)
    assert (mid.precision.hits, mid.precision.n, mid.held, mid.held_correct, mid.automated) == (2, 2, 3, 1, 1)
    assert (high.precision.hits, high.precision.n, high.held, high.held_correct, high.automated) == (1, 1, 4, 2, 0)
    assert mid.precision.value == 1.0 and mid.precision.low < 1.0 and low.automated_before == 2
    text = render_sweep("c", writes, [low, mid, high])
    assert "3 right, median 0.850; 1 wrong, median 0.550" in text and "0.80" in text


def test_no_writes_give_empty_rates():
    (effect,) = sweep([], [_row("a", True)], floors=(0.9,))
    assert effect.precision.n == 0 and effect.precision.value is None and effect.automated == 1
    assert "n/a" in render_sweep("c", [], [effect])
