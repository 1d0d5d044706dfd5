"""The autonomy ladder's rule, with a scripted stage runner (no cluster): a class moves up only on
its gate's own evidence, stage by stage, and only promoted classes run autonomous afterwards."""

from __future__ import annotations

import pytest

from opsagent.errors import InputError
from opsagent.policy.gates import Evidence, gate_allows
from opsagent.evals.ladder import Ladder, climb, judge
from opsagent.evals.ladder_cli import gated_configs
from opsagent.evals.metrics import CaseResult
from opsagent.evals.runner import EvalConfig
from opsagent.policy.modes import GateConfig, Mode
from opsagent.policy.config import load_default_policy

SEED = 1_200_000


def _policy(min_cases: int = 20, threshold: float = 0.85):
    data = load_default_policy().model_dump(mode="json")
    data["gates"].update(min_cases=min_cases, threshold=threshold)
    return type(load_default_policy()).model_validate(data)


def _row(inst, correct: bool) -> CaseResult:
    return CaseResult(run_id="r", config="c", trial=0, instance_id=inst.instance_id,
                      exception_type=inst.exception_type, variant=inst.variant, case_id=f"case-{inst.instance_id}",
                      status="resolved", gold_outcome=inst.gold.outcome, score=float(correct),
                      outcome_ok=correct, state_ok=correct)


class Scripted:
    """Per (class, stage): how many cases in each block of 10 are right (None: no verdict)."""

    def __init__(self, right: dict[tuple[str, Mode], int], silent: int = 0) -> None:
        self.right, self.silent, self.calls = right, silent, []

    def __call__(self, instances, stage, label):
        self.calls.append((stage, sorted({i.exception_type for i in instances}), len(instances)))
        out, seen = [], {}
        for inst in instances:
            n = seen[inst.exception_type] = seen.get(inst.exception_type, -1) + 1
            correct = n % 10 < self.right[(inst.exception_type, stage)]
            verdict = None if n < self.silent and len(self.calls) == 1 else correct
            out.append((_row(inst, correct), verdict))
        return out


def test_a_class_right_every_time_is_promoted_stage_by_stage_and_one_below_the_gate_never():
    runner = Scripted({("weight_mismatch", Mode.shadow): 10, ("weight_mismatch", Mode.supervised): 10,
                       ("damage_claim", Mode.shadow): 9, ("damage_claim", Mode.supervised): 10})
    ladder = climb(["weight_mismatch", "damage_claim"], _policy(min_cases=30), runner, seed=SEED)
    good, bad = ladder.classes["weight_mismatch"], ladder.classes["damage_claim"]
    assert good.promoted and [s.stage for s in good.stages] == [Mode.shadow, Mode.supervised]
    assert good.stages[0].evidence.n == 30 and good.stages[0].evidence.correct == 30
    # 27/30 right is 90 %, but its Wilson lower bound (0.744) is below the gate's 0.85
    assert not bad.promoted and bad.mode == Mode.shadow and [s.stage for s in bad.stages] == [Mode.shadow]
    assert bad.stages[0].evidence.correct == 27 and bad.stages[0].evidence.low < 0.85
    assert "lower bound" in bad.stages[0].why
    # the supervised stage ran only the class the shadow gate let through
    assert runner.calls == [(Mode.shadow, ["damage_claim", "weight_mismatch"], 60),
                            (Mode.supervised, ["weight_mismatch"], 30)]
    assert ladder.modes() == {"weight_mismatch": Mode.autonomous, "damage_claim": Mode.supervised}


def test_a_class_that_fails_supervision_stays_supervised():
    runner = Scripted({("tracking_stuck", Mode.shadow): 10, ("tracking_stuck", Mode.supervised): 7})
    ladder = climb(["tracking_stuck"], _policy(min_cases=30), runner, seed=SEED)
    c = ladder.classes["tracking_stuck"]
    assert c.mode == Mode.supervised and not c.promoted
    assert ladder.modes() == {"tracking_stuck": Mode.supervised}


def test_fewer_verdicts_than_the_gate_asks_for_promote_nobody():
    """A budget below the gate's min_cases is a quick look, never a promotion, however right."""
    runner = Scripted({("weight_mismatch", Mode.shadow): 10, ("weight_mismatch", Mode.supervised): 10})
    ladder = climb(["weight_mismatch"], _policy(min_cases=200), runner, seed=SEED, verdicts=40)
    c = ladder.classes["weight_mismatch"]
    assert c.stages[0].evidence.n == 40 and c.stages[0].evidence.correct == 40
    assert not c.stages[0].allowed and "40 verdicts < the gate's 200" in c.stages[0].why
    assert c.mode == Mode.shadow and ladder.modes() == {"weight_mismatch": Mode.supervised}
    # every stage measured for the report still promotes nobody past an unpassed stage
    every = climb(["weight_mismatch"], _policy(min_cases=200), runner, seed=SEED, verdicts=40, every_stage=True)
    assert [s.stage for s in every.classes["weight_mismatch"].stages] == [Mode.shadow, Mode.supervised]
    assert every.classes["weight_mismatch"].mode == Mode.shadow


def test_cases_without_a_verdict_are_made_up_with_fresh_instances():
    runner = Scripted({("missed_pickup", Mode.shadow): 10, ("missed_pickup", Mode.supervised): 10}, silent=5)
    ladder = climb(["missed_pickup"], _policy(min_cases=30), runner, seed=SEED, max_rounds=2)
    shadow = ladder.classes["missed_pickup"].stages[0]
    assert shadow.evidence.n == 30 and shadow.rounds == 2 and shadow.cases == 35 and shadow.allowed
    assert runner.calls[:2] == [(Mode.shadow, ["missed_pickup"], 30), (Mode.shadow, ["missed_pickup"], 5)]
    # one round only: 25 verdicts, short of the gate
    short = climb(["missed_pickup"], _policy(min_cases=30), Scripted(runner.right, silent=5), seed=SEED,
                  max_rounds=1)
    assert short.classes["missed_pickup"].stages[0].evidence.n == 25
    assert short.classes["missed_pickup"].mode == Mode.shadow


def test_the_ladder_runs_on_training_seeds_and_known_classes_only():
    runner = Scripted({})
    with pytest.raises(InputError, match="held out"):
        climb(["weight_mismatch"], _policy(), runner, seed=271828)
    with pytest.raises(InputError, match="no class"):
        climb(["no_such_class"], _policy(), runner, seed=SEED)
    with pytest.raises(InputError, match="budget"):
        climb(["weight_mismatch"], _policy(), runner, seed=SEED, verdicts=0)


@pytest.mark.parametrize("correct, n, allowed", [(200, 200, True), (180, 200, True), (175, 200, False),
                                                  (20, 20, False), (199, 199, False)])
def test_judge_is_the_gates_own_rule(correct, n, allowed):
    gate = GateConfig()
    evidence, ok, _ = judge([True] * correct + [False] * (n - correct), gate, Mode.shadow)
    assert ok is allowed is gate_allows(Evidence(n=n, correct=correct, low=evidence.low, high=evidence.high), gate)


def test_the_gated_deployment_runs_only_promoted_classes_autonomous():
    runner = Scripted({("weight_mismatch", Mode.shadow): 10, ("weight_mismatch", Mode.supervised): 10,
                       ("damage_claim", Mode.shadow): 10, ("damage_claim", Mode.supervised): 6})
    ladder = climb(["weight_mismatch", "damage_claim"], _policy(min_cases=30), runner, seed=SEED)
    gated, diagnostic = gated_configs(EvalConfig(), ladder, diagnostic=True)
    assert gated.mode == "supervised"
    assert gated.class_modes == {"weight_mismatch": "autonomous", "damage_claim": "supervised"}
    assert diagnostic.mode == "autonomous" and diagnostic.class_modes == {}
    assert Ladder.model_validate(ladder.model_dump(mode="json")).modes() == ladder.modes()


def _shadow_case(root, inst, case_id: str, writes: list[tuple[str, dict]], outcome: str) -> None:
    from datetime import UTC, datetime

    from opsagent.agents.tracing.parquet import ParquetExporter
    from opsagent.agents.tracing.records import ActionEvent, CaseEvent

    at = datetime.now(UTC)
    events = [CaseEvent(case_id=case_id, exception_type=inst.exception_type, status="proposed", outcome=outcome,
                        description="d", entities=inst.entities, received_at=at, finished_at=at, recorded_at=at),
              ActionEvent(case_id=case_id, step=1, tool="wms_get_shipment", args={}, risk="low", decision="allow",
                          reasons=[], writes=False, executed=True, dry_run=False, started_at=at,
                          policy_version="v", args_digest="d", autonomy_mode="shadow")]
    for step, (tool, args) in enumerate(writes, start=2):
        events.append(ActionEvent(case_id=case_id, step=step, tool=tool, args=args, risk="low", decision="propose",
                                  reasons=[], writes=True, executed=False, dry_run=True, started_at=at,
                                  policy_version="v", args_digest="d", autonomy_mode="shadow"))
    with ParquetExporter(root) as out:
        out.export(events)


def test_shadow_cases_are_judged_against_the_gold_and_read_back_as_the_gates_verdicts(tmp_path):
    from opsagent.evals.catalogue import make
    from opsagent.evals.ladder import gold_verdicts, record, verdicts_of

    inst = next(i for i in make("weight_mismatch", seed=SEED, count=10) if i.variant == "dispute")
    (gold_write,) = [a for a in inst.gold.actions if a.writes]
    wrong_args = {**gold_write.args, "claimed_weight_kg": 999.0}
    cases = {"case-right": ([(gold_write.tool, gold_write.args)], "resolved"),
             "case-wrong-args": ([(gold_write.tool, wrong_args)], "resolved"),
             "case-escalated": ([], "escalated"),
             "case-extra": ([(gold_write.tool, gold_write.args), ("wms_request_rescan", {})], "resolved")}
    for case_id, (writes, outcome) in cases.items():
        _shadow_case(tmp_path, inst, case_id, writes, outcome)
    rows = [_row(inst, True).model_copy(update={"case_id": c}) for c in cases]
    verdicts = gold_verdicts(tmp_path, rows, [inst])
    assert {v.case_id: v.correct for v in verdicts} == {
        "case-right": True, "case-wrong-args": False, "case-escalated": False, "case-extra": False}
    assert all(v.autonomy_mode == "shadow" and v.source == "human_log" for v in verdicts)
    record(tmp_path, verdicts)
    back = {r.case_id: v for r, v in verdicts_of(tmp_path, rows, Mode.shadow)}
    assert back == {"case-right": True, "case-wrong-args": False, "case-escalated": False, "case-extra": False}
    assert all(v is None for _, v in verdicts_of(tmp_path, rows, Mode.supervised))


def test_the_ladder_command_prints_the_ladder_and_the_gated_headline(monkeypatch, tmp_path, capsys):
    import argparse
    import contextlib
    import json
    from datetime import UTC, datetime

    from opsagent.evals import ladder_cli, runner
    from opsagent.evals.catalogue import make
    from opsagent.evals.metrics import EvalRun

    runner_ = Scripted({("weight_mismatch", Mode.shadow): 10, ("weight_mismatch", Mode.supervised): 10,
                        ("damage_claim", Mode.shadow): 5, ("damage_claim", Mode.supervised): 10})
    ladder = climb(["weight_mismatch", "damage_claim"], _policy(min_cases=30), runner_, seed=SEED)
    held = make("weight_mismatch", seed=3, count=2) + make("damage_claim", seed=3, count=2)
    rows = [_row(i, True).model_copy(update={"config": "gated", "case_id": None}) for i in held]
    run = EvalRun(run_id="r1", configs=["gated"], trials=1, concurrency=1, instances=4,
                  classes=["damage_claim", "weight_mismatch"], started_at=datetime.now(UTC), wall_s=1.0, rows=rows)
    monkeypatch.setattr(ladder_cli, "run_ladder", lambda args, instances, base: (ladder, run))
    monkeypatch.setattr(runner, "ray_runtime", contextlib.nullcontext)
    args = argparse.Namespace(traces=tmp_path)
    assert ladder_cli.run_ladder_command(args, held, EvalConfig()) == 0
    out = capsys.readouterr().out
    assert "weight_mismatch" in out and "autonomous" in out and "30/30" in out and "15/30" in out
    assert "gated: automation" in out and "approvals asked per case" in out
    saved = json.loads((tmp_path / "eval_results" / "run=r1" / "ladder.json").read_text())
    assert Ladder.model_validate(saved).modes() == ladder.modes()
