"""The ladder on the real cluster with a scripted planner: right on one class, wrong on another.
The right class earns autonomy on the gates' own verdicts (shadow judged against the gold,
supervised by the simulated approver); the held-out run then acts alone only on it."""

from __future__ import annotations

import argparse
from typing import Any

import pytest
import yaml

from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.views import query, sql_list
from opsagent.cluster.config import SystemConfig
from opsagent.evals.catalogue import make
from opsagent.agents.tracing.evidence import case_verdicts
from opsagent.evals.gold import conversation, gold_step
from opsagent.evals.ladder_cli import GATED, ladder_table, run_ladder
from opsagent.evals.metrics import summarize
from opsagent.evals.runner import EvalConfig
from opsagent.policy.modes import Mode
from opsagent.policy.config import load_default_policy
from opsagent.evals.bench.soak import GoldScriptedEngine


def _planner(request: Any) -> dict[str, Any]:
    """Gold on weight mismatches; on damage claims it gives up after the first read (wrong on
    every one: the gold credits the claim or hands the ticket to customer service)."""
    exception_type, entities, results = conversation(request)
    if exception_type == "weight_mismatch":
        return gold_step(request)
    book = builtin_playbooks()[exception_type]
    unknown = {k: f.unknown for k, f in book.evidence.items()}
    if not results:
        return {"evidence": unknown, "tool": "tkt_get_ticket", "args": {"ticket_id": entities.get("ticket_id")}}
    return {"evidence": unknown, "tool": "finish", "status": "escalated", "reason": "not sure"}


@pytest.mark.ray
def test_the_ladder_promotes_only_the_class_that_earned_it_and_the_held_out_run_obeys(ray_runtime, tmp_path):
    data = load_default_policy().model_dump(mode="json")
    data["gates"].update(min_cases=3, threshold=0.4)  # 3/3 right: Wilson lower bound 0.44
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(data))
    base = EvalConfig(name="base", system=SystemConfig(executors=1), policy=policy)
    held_out = make("weight_mismatch", seed=4242, count=3) + make("damage_claim", seed=4242, count=2)
    traces = tmp_path / "traces"
    args = argparse.Namespace(traces=traces, concurrency=3, case_timeout=180.0, train_seed=1_100_000,
                              verdicts=None, max_rounds=3, every_stage=False, diagnostic=False, eval_set="t")
    ladder, run = run_ladder(args, held_out, base, engines=lambda c: GoldScriptedEngine(_planner))

    good, bad = ladder.classes["weight_mismatch"], ladder.classes["damage_claim"]
    assert good.promoted, good.stages
    assert [(s.stage, s.evidence.correct, s.evidence.n) for s in good.stages] == [
        (Mode.shadow, 3, 3), (Mode.supervised, 3, 3)]
    assert bad.mode == Mode.shadow and len(bad.stages) == 1
    assert bad.stages[0].evidence.n == 3 and bad.stages[0].evidence.correct == 0
    # the verdicts are the gates' own, read back from the trace store: shadow ones compared with
    # the gold, supervised ones from the simulated approver's decisions
    sources = {(v.exception_type, v.mode, v.source) for v in case_verdicts(traces)}
    assert ("weight_mismatch", Mode.shadow, "human_log") in sources
    assert ("weight_mismatch", Mode.supervised, "approvals") in sources
    assert ("damage_claim", Mode.shadow, "human_log") in sources

    # held out: the promoted class ran autonomous, the other supervised (never autonomous)
    ids = {r.case_id: r.exception_type for r in run.rows}
    _, modes = query(traces, f"SELECT DISTINCT case_id, autonomy_mode FROM actions WHERE case_id IN {sql_list(ids)}")
    seen = {(ids[c], m) for c, m in modes}
    assert seen == {("weight_mismatch", "autonomous"), ("damage_claim", "supervised")}, seen
    m = summarize(run.rows)[GATED]
    assert m.by_class["weight_mismatch"].accuracy.value == 1.0
    disputes = [r for r in run.rows if r.exception_type == "weight_mismatch" and r.gold_outcome == "resolved"]
    assert disputes and all(r.automated and r.approvals_requested == 0 for r in disputes)
    assert m.by_class["damage_claim"].automation.hits == 0
    table = ladder_table(ladder, m)
    assert "autonomous" in table and "3/3" in table and "0/3" in table
