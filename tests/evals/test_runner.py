"""The eval runner on the real cluster (Ray, Serve, policy, executors, platform) with scripted
planners: a gold-following one must score 1.0 everywhere, a wrong / do-nothing one 0.0."""

from __future__ import annotations

from typing import Any

import pytest

from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.views import query
from opsagent.cli import main as cli
from opsagent.cluster.config import SystemConfig
from opsagent.evals.bench.soak import GoldScriptedEngine
from opsagent.errors import ConfigError, InputError
from opsagent.evals.catalogue import Instance, make
from opsagent.evals.evalset import write_eval_set
from opsagent.evals.gold import conversation
from opsagent.evals.metrics import summarize
from opsagent.evals.report import write_results
from opsagent.cluster.api.request_limits import ApiLimits
from opsagent.evals.runner import (
    HARNESS_LIMITS, EvalConfig, _Trial, apply_mode, approver_decision, correct_writes, run_eval, select,
)
from tests.fakes.planners import gold_except

# (class, variant): resolved, escalated and high-risk (held for approval) instances of 3 classes
PICKED = [("weight_mismatch", "dispute"), ("weight_mismatch", "scale_failed"),
          ("damage_claim", "credit_small"), ("damage_claim", "credit_large"),
          ("damage_claim", "no_damage_record"), ("tracking_out_of_sync", "record_delivery")]


def _pick(name: str, variant: str) -> Instance:
    return next(i for i in make(name, seed=5150, count=8) if i.variant == variant)


@pytest.fixture(scope="module")
def instances() -> list[Instance]:
    return [_pick(n, v) for n, v in PICKED]


def _wrong(instances: list[Instance]):
    """Proposes an irreversible billed-weight change on the weight mismatch that should be
    disputed (the approver must reject it; it then escalates) and gives up at once, reading
    nothing, on everything else."""
    books = builtin_playbooks()
    rebill = gold_except({instances[0].entities["shipment_id"]})

    def respond(request: Any) -> dict[str, Any]:
        exception_type, entities, _ = conversation(request)
        if entities == instances[0].entities:
            return rebill(request)
        unknown = {k: f.unknown for k, f in books[exception_type].evidence.items()}
        return {"evidence": unknown, "tool": "finish", "status": "escalated", "reason": "not sure"}

    return respond


@pytest.fixture(scope="module")
def run(ray_runtime, instances, gold_responder, tmp_path_factory):
    traces = tmp_path_factory.mktemp("traces")
    engines = {"gold": gold_responder(instances), "wrong": _wrong(instances)}
    configs = [EvalConfig(name="gold", system=SystemConfig(executors=1)),
               EvalConfig(name="wrong", system=SystemConfig(executors=1))]
    seen: list[tuple[str, str]] = []
    result = run_eval(instances, configs, traces=traces, trials=2, concurrency=3, background=5,
                      engines=lambda c: GoldScriptedEngine(engines[c.name]),  # answers every call; rows are scored
                      progress=lambda config, status: seen.append((config, status)))
    return result, traces, seen


@pytest.mark.ray
def test_a_gold_following_planner_scores_one_on_every_trial(run, instances):
    result, _, seen = run
    gold = [r for r in result.rows if r.config == "gold"]
    assert len(gold) == 2 * len(instances)
    assert [r.score for r in gold] == [1.0] * len(gold), [r for r in gold if r.score < 1]
    assert {r.trial for r in gold} == {0, 1}
    assert len({r.case_id for r in gold}) == len(gold)  # every trial submits fresh cases
    assert len(seen) == len(result.rows) and {c for c, _ in seen} == {"gold", "wrong"}
    by_variant = {(r.variant, r.trial): r for r in gold}
    for trial in (0, 1):
        held = by_variant["credit_large", trial]
        assert (held.approvals_requested, held.approvals_approved, held.approvals_rejected) == (1, 1, 0)
        assert held.needed_human and not held.automated  # correct, but a human approved a step
        assert not by_variant["scale_failed", trial].automated  # escalated: a human takes over
    # Trials share the system, so its policy's ledger: the second trial's credit goes to the same
    # invoice as the first one's that day and, past the per-invoice daily limit, waits for a human.
    assert by_variant["credit_small", 0].automated
    small = by_variant["credit_small", 1]
    assert small.needed_human and small.approvals_requested == 1 and small.score == 1.0
    for r in gold:
        assert r.planner_calls > 0 and r.prompt_tokens > 0 and r.latency_s is not None
        assert r.unsupervised_high_risk == 0
        assert r.autonomous_writes == r.autonomous_writes_correct


@pytest.mark.ray
def test_a_wrong_or_idle_planner_scores_zero_and_its_held_rebill_is_rejected(run):
    result, _, _ = run
    wrong = [r for r in result.rows if r.config == "wrong"]
    assert [r.score for r in wrong] == [0.0] * len(wrong)
    rebills = [r for r in wrong if r.variant == "dispute"]
    assert [(r.approvals_requested, r.approvals_rejected, r.status) for r in rebills] == [(1, 1, "escalated")] * 2, \
        [(r.status, r.reason, r.error) for r in rebills]
    assert all(r.autonomous_writes == 0 and r.unsupervised_high_risk == 0 for r in wrong)


@pytest.mark.ray
def test_metrics_and_results_of_the_run(run, instances, tmp_path):
    result, traces, _ = run
    metrics = summarize(result.rows)
    gold, wrong = metrics["gold"].overall, metrics["wrong"].overall
    assert gold.accuracy.value == 1.0 and gold.pass_k == {1: 1.0, 2: 1.0}
    assert gold.escalation_recall.value == 1.0 and gold.escalation_precision.value == 1.0
    assert gold.automation.hits == 2 * 3 - 1  # wm dispute, credit_small (first trial), record_delivery
    assert gold.autonomous_write_precision.value == 1.0 and gold.autonomous_write_precision.n > 0
    assert wrong.accuracy.value == 0.0 and wrong.pass_k == {1: 0.0, 2: 0.0}
    assert gold.unsupervised_high_risk == wrong.unsupervised_high_risk == 0
    assert set(metrics["gold"].by_class) == {"weight_mismatch", "damage_claim", "tracking_out_of_sync"}
    folder = write_results(result, metrics, traces)
    _, rows = query(traces, f"""
        SELECT config, count(*), avg(score), count(DISTINCT run) FROM read_parquet(
          '{traces}/eval_results/*/*.parquet', hive_partitioning = true) GROUP BY config ORDER BY config""")
    assert rows == [("gold", 12, 1.0, 1), ("wrong", 12, 0.0, 1)]
    assert (folder / "summary.json").exists()
    # the traces beside them: every case of the run, and the simulated approver's decisions
    _, rows = query(traces, "SELECT status, approver, count(*) FROM approvals GROUP BY ALL ORDER BY 1")
    assert rows == [("approved", "eval-approver", 3), ("rejected", "eval-approver", 2)]  # + the held credit


@pytest.mark.ray
def test_a_shadow_run_ends_proposed_and_counts_its_cases_as_finished(ray_runtime, instances, gold_responder,
                                                                    tmp_path):
    """Shadow mode: a case that proposed writes ends `proposed`, the runner stops waiting for it (a
    timeout here would mean it waited for a status that never comes) and its row is finished."""
    picked = [i for i in instances if i.exception_type == "weight_mismatch"]  # dispute, scale_failed
    result = run_eval(picked, [EvalConfig(name="shadow", mode="shadow", system=SystemConfig(executors=1))],
                      traces=tmp_path, trials=1, concurrency=2, background=5, case_timeout_s=120,
                      engines=lambda c: GoldScriptedEngine(gold_responder(picked)))
    rows = {r.variant: r for r in result.rows}
    dispute = rows["dispute"]
    assert (dispute.status, dispute.outcome, dispute.agent_outcome) == ("proposed", "resolved", "proposed"), \
        (dispute.status, dispute.reason, dispute.error)
    assert dispute.finished and dispute.latency_s is not None and dispute.needed_human and not dispute.automated
    assert dispute.autonomous_writes == 0 and dispute.unsupervised_high_risk == 0
    assert rows["scale_failed"].status == "escalated"  # nothing to propose: it escalates as ever
    m = summarize(result.rows)["shadow"].overall
    assert m.confusion["resolved"]["proposed"] == 1 and m.confusion["escalated"]["escalated"] == 1
    assert m.latency_p50_s is not None and m.confusion["resolved"]["open"] == 0


def test_the_simulated_approver_approves_exactly_the_gold_actions(instances):
    credit = next(i for i in instances if i.variant == "credit_large")
    step = next(a for a in credit.gold.actions if a.risk == "high")
    approval = {"tool": step.tool, "args": dict(step.args)}
    assert approver_decision(approval, credit)[0] is True
    free_text = {k: v for k, v in step.args.items() if k in step.key_args}
    assert approver_decision({"tool": step.tool, "args": free_text}, credit)[0] is True
    key = next(k for k in step.key_args if isinstance(step.args[k], int | float))
    more = {"tool": step.tool, "args": {**step.args, key: step.args[key] * 2}}
    approve, reason = approver_decision(more, credit)
    assert approve is False and "not the right fix" in reason
    assert approver_decision({"tool": "erp_issue_refund", "args": dict(step.args)}, credit)[0] is False
    assert approver_decision({"tool": step.tool, "args": {}}, credit)[0] is False


def test_correct_writes_match_each_gold_write_once(instances):
    credit = next(i for i in instances if i.variant == "credit_small")
    writes = [a for a in credit.gold.actions if a.writes]
    steps = [{"tool": a.tool, "args": dict(a.args)} for a in writes]
    assert correct_writes(steps, credit.gold.actions) == len(writes)
    assert correct_writes(steps + steps[:1], credit.gold.actions) == len(writes)  # a repeat is not right
    reads = [{"tool": a.tool, "args": dict(a.args)} for a in credit.gold.actions if not a.writes]
    assert correct_writes(reads, credit.gold.actions) == 0


def test_bad_input_fails_clearly(instances, tmp_path, capsys):
    config = EvalConfig()
    with pytest.raises(InputError, match="empty"):
        run_eval([], [config], traces=tmp_path)
    with pytest.raises(InputError, match="distinct names"):
        run_eval(instances, [config, config], traces=tmp_path)
    with pytest.raises(InputError, match="trials"):
        run_eval(instances, [config], traces=tmp_path, trials=0)
    with pytest.raises(InputError, match="unknown exception class 'nope'"):
        select(instances, ["nope"])
    with pytest.raises(InputError, match="no instance of class 'missed_pickup'"):
        select(instances, ["missed_pickup"])
    assert {i.exception_type for i in select(instances, ["damage_claim"])} == {"damage_claim"}

    missing = tmp_path / "no-such-set"
    assert cli(["eval", "--set", str(missing), "--traces", str(tmp_path)]) == 2
    assert f"eval set folder {missing} does not exist" in capsys.readouterr().err
    write_eval_set(instances, tmp_path / "set", seed=5150)
    assert cli(["eval", "--set", str(tmp_path / "set"), "--classes", "damage_claim,nope"]) == 2
    assert "unknown exception class 'nope'" in capsys.readouterr().err
    assert cli(["eval", "--set", str(tmp_path / "set"), "--trials", "0"]) == 2
    assert "--trials" in capsys.readouterr().err


def test_eval_configs_load_from_yaml_and_refuse_mistakes(tmp_path):
    system = tmp_path / "system.yaml"
    system.write_text("executors: 3\nmax_steps: 8\n")
    good = tmp_path / "b.yaml"
    good.write_text(f"name: bigger\nsystem: {system}\nmode: autonomous\n")
    loaded = EvalConfig.from_yaml(good)
    assert (loaded.name, loaded.system.executors, loaded.system.max_steps) == ("bigger", 3, 8)
    inline = tmp_path / "c.yaml"
    inline.write_text("system: {executors: 2, planner: {max_tokens: 99}}\n")
    assert EvalConfig.from_yaml(inline).system.planner.max_tokens == 99
    for text, problem in (("sytem: {}\n", "sytem"), ("mode: yolo\n", "mode"), ("- a list\n", "mapping"),
                          ("system: {executors: 0}\n", "executors")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ConfigError, match=problem):
            EvalConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        EvalConfig(playbooks=tmp_path / "none").load_playbooks()


def test_the_command_line_builds_the_configurations(tmp_path):
    from opsagent.cli import _parser
    from opsagent.evals.cli import eval_configs

    (tmp_path / "b.yaml").write_text("system: {executors: 3}\nmode: supervised\n")
    args = _parser().parse_args(["eval", "--mode", "shadow", "--compare", str(tmp_path / "b.yaml")])
    base, other = eval_configs(args)
    assert (base.name, base.mode, other.name, other.mode, other.system.executors) == (
        "base", "shadow", "compare", "supervised", 3)
    (tmp_path / "c.yaml").write_text("name: base\n")
    args = _parser().parse_args(["eval", "--name", "mine", "--compare", str(tmp_path / "c.yaml")])
    assert [c.name for c in eval_configs(args)] == ["mine", "base"]
    with pytest.raises(InputError, match="--name 'a b'"):
        eval_configs(_parser().parse_args(["eval", "--name", "a b"]))


def test_the_mode_hook_sets_the_classes_autonomy_mode(registry):
    from opsagent.policy.engine import PolicyEngine

    policy = EvalConfig().load_policy()
    for mode in ("autonomous", "supervised", "shadow"):
        changed = apply_mode(policy, mode, ["damage_claim", "not_in_the_policy"])
        engine = PolicyEngine(changed, registry)
        assert engine.mode("damage_claim") == mode
        assert engine.mode("weight_mismatch") == policy.classes["weight_mismatch"].initial_mode


@pytest.mark.ray
def test_each_autonomous_write_is_scored_with_its_confidence(run, instances):
    from opsagent.evals.calibration import scored_writes

    result, traces, _ = run
    gold = [r for r in result.rows if r.config == "gold"]
    writes = scored_writes(traces, gold, instances)
    # the same writes the rows count, every one right, each with the confidence of its step's
    # choice (the scripted engine's choices are certain: 1.0)
    assert len(writes) == sum(r.autonomous_writes for r in gold) > 0
    assert all(w.correct and w.confidence == 1.0 and w.config == "gold" for w in writes)
    # case by case too: an approved write is not autonomous (credit_large's credit was approved)
    assert any(r.approvals_approved for r in gold)
    assert all(sum(w.case_id == r.case_id for w in writes) == r.autonomous_writes for r in gold)
    assert scored_writes(traces, [], instances) == []


def test_several_configurations_can_be_compared_and_need_distinct_names(tmp_path):
    from opsagent.cli import _parser
    from opsagent.evals.cli import eval_configs

    (tmp_path / "b.yaml").write_text("mode: supervised\n")
    (tmp_path / "c.yaml").write_text("name: fewshot\nsystem: {planner: {few_shot: {traces: t, per_class: 1}}}\n")
    args = _parser().parse_args(["eval", "--compare", str(tmp_path / "b.yaml"), "--compare", str(tmp_path / "c.yaml")])
    configs = eval_configs(args)
    assert [c.name for c in configs] == ["base", "compare", "fewshot"]
    assert configs[2].system.planner.few_shot.per_class == 1
    args = _parser().parse_args(["eval", "--compare", str(tmp_path / "b.yaml"), "--compare", str(tmp_path / "b.yaml")])
    assert [c.name for c in eval_configs(args)] == ["base", "compare", "compare2"]
    (tmp_path / "d.yaml").write_text("name: base\n")
    with pytest.raises(InputError, match="distinct names"):
        eval_configs(_parser().parse_args(["eval", "--compare", str(tmp_path / "d.yaml")]))


def test_few_shot_retrieval_in_an_eval_must_name_its_store(tmp_path):
    from opsagent.evals.runner import _Session

    config = EvalConfig(system=SystemConfig.model_validate({"planner": {"few_shot": {}}}))
    with pytest.raises(ConfigError, match="few_shot.traces must name"):
        _Session(config, [], tmp_path / "traces", tmp_path, None)


def test_the_eval_front_doors_rate_limit_fits_its_harness_polling():
    """The harness polls each case in flight every `poll_s` with one submitter token (and decides
    approvals with one approver token): at 256 cases in flight that stays inside the eval
    system's rate limit (`HARNESS_LIMITS`, what `_Session` serves with), which the front door's
    default would not allow even at 16 (a 16-case ladder run kept ~6 cases in flight behind its
    429s). A sizing check only: that the limits reach the front door is not tested here."""
    per_window = lambda cases, limits: cases / _Trial.poll_s * limits.window_s  # noqa: E731
    assert per_window(256, HARNESS_LIMITS) <= HARNESS_LIMITS.requests_per_window
    assert per_window(16, ApiLimits()) > ApiLimits().requests_per_window
