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


def _w(cls: str, confidence: float | None, correct: bool, decided_by: str = "model", n: int = 0):
    from opsagent.evals.calibration import ScoredWrite

    return ScoredWrite(config="c", case_id=f"case-{cls}-{confidence}-{correct}-{n}", instance_id="i", step=2,
                       tool="t", confidence=confidence, correct=correct, decided_by=decided_by,
                       exception_type=cls)


def test_platt_calibration_is_fitted_on_model_decisions_and_inverts_to_a_raw_floor():
    import pytest as _pytest

    from opsagent.evals.calibration import fit_platt

    writes = ([_w("a", 0.9, True, n=i) for i in range(8)] + [_w("a", 0.55, False, n=i) for i in range(4)]
              + [_w("a", 0.55, True, n=i + 10) for i in range(2)] + [_w("a", 1.0, False, "rule")])
    cal = fit_platt(writes)
    assert cal.n == 14 and cal.right == 10  # the rule's write is not the model's
    assert cal.a > 0 and cal(0.9) > 0.9 and cal(0.55) < 0.5
    assert abs(cal(cal.raw_floor(0.8)) - 0.8) < 1e-6
    with _pytest.raises(ValueError, match="both right and wrong"):
        fit_platt([_w("a", 0.9, True, n=i) for i in range(5)])


def test_class_floors_reach_the_target_on_training_or_hold_every_model_choice():
    from opsagent.evals.calibration import apply_floors, class_floors, fit_platt

    writes = ([_w("sure", 0.9, True, n=i) for i in range(5)]
              + [_w("split", 0.8, True, n=i) for i in range(6)] + [_w("split", 0.5, False, n=i) for i in range(3)]
              + [_w("hopeless", 0.9, False, n=i) for i in range(3)] + [_w("hopeless", 0.6, True, n=i) for i in range(2)]
              + [_w("hopeless", 1.0, True, "rule")])
    floors = {f.exception_type: f for f in class_floors(writes, fit_platt(writes), target=0.95)}
    assert floors["sure"].min_confidence is None and floors["sure"].held == 0
    split = floors["split"]
    assert split.min_confidence == 0.8 and split.held == 3 and split.precision_after.value == 1.0
    assert split.precision_before.hits == 6 and split.precision_before.n == 9
    hopeless = floors["hopeless"]  # no floor reaches 95 %: every model choice is held, the rule's runs
    assert hopeless.min_confidence == 1.0 and hopeless.held == 5 and hopeless.precision_after.n == 1
    precision, held = apply_floors(writes, list(floors.values()))
    assert (precision.hits, precision.n, held) == (12, 12, 8)


def test_calibrate_refuses_a_held_out_set_and_a_missing_run(tmp_path, capsys):
    from opsagent.cli import main as cli
    from opsagent.evals.catalogue import make
    from opsagent.evals.evalset import write_eval_set

    held, train = tmp_path / "held", tmp_path / "train"
    write_eval_set(make("weight_mismatch", seed=7, count=1), held, seed=7)
    write_eval_set(make("weight_mismatch", seed=1_000_007, count=1), train, seed=1_000_007)
    assert cli(["eval", "calibrate", "--set", str(held), "--run", "r1", "--traces", str(tmp_path)]) == 2
    assert "calibrate on a training set only" in capsys.readouterr().err
    assert cli(["eval", "calibrate", "--set", str(train), "--run", "r1", "--traces", str(tmp_path)]) == 2
    assert "no results of run r1" in capsys.readouterr().err
