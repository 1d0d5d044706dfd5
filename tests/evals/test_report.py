"""Eval outputs: results Parquet beside the traces (read with DuckDB), terminal summary, HTML report."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import duckdb
import pytest

from opsagent.evals.metrics import CaseResult, EvalRun, summarize
from opsagent.evals.report import (
    bar_chart, histogram, html_report, results_schema, terminal_summary, write_html, write_results,
)
from tests.evals.test_metrics import row


@pytest.fixture
def run() -> EvalRun:
    rows = []
    for config, good in (("base", True), ("bigger", False)):
        for trial in (0, 1):
            rows += [
                row(config=config, trial=trial, instance_id="dc-0", autonomous_writes=1,
                    autonomous_writes_correct=1, latency_s=3.0 + trial,
                    received_at=datetime(2026, 1, 1, tzinfo=UTC)),
                row(config=config, trial=trial, instance_id="mp-0", exception_type="missed_pickup",
                    gold_outcome="escalated", status="escalated" if good else "resolved",
                    outcome="escalated" if good else "resolved", score=1.0 if good else 0.0,
                    outcome_ok=good, missing_actions=[] if good else ["tkt_assign_ticket(team='carrier_ops')"],
                    reason="<script>alert(1)</script>", latency_s=20.0),
                row(config=config, trial=trial, instance_id="mp-1", exception_type="missed_pickup",
                    status="timeout", outcome=None, score=0.0, outcome_ok=False, latency_s=None,
                    error="no final status in 1800 s"),
            ]
    return EvalRun(run_id="20260101T000000-abcdef", eval_set="/tmp/set", configs=["base", "bigger"],
                   models={"base": "SmolLM2-135M-Instruct", "bigger": None}, trials=2, concurrency=4,
                   instances=3, classes=["damage_claim", "missed_pickup"],
                   started_at=datetime(2026, 1, 1, tzinfo=UTC), wall_s=12.5, rows=rows)


def test_results_parquet_is_read_with_duckdb_beside_the_traces(run, tmp_path):
    assert set(results_schema().names) == set(CaseResult.model_fields)
    folder = write_results(run, summarize(run.rows), tmp_path)
    assert folder == tmp_path / "eval_results" / f"run={run.run_id}"
    con = duckdb.connect()
    got = con.sql(f"""
        SELECT run, config, count(*), sum(score), count(latency_s), max(len(missing_actions)),
               max(received_at)
        FROM read_parquet('{tmp_path}/eval_results/*/*.parquet', hive_partitioning = true)
        GROUP BY ALL ORDER BY config""").fetchall()
    assert [g[:6] for g in got] == [(run.run_id, "base", 6, 4.0, 4, 0), (run.run_id, "bigger", 6, 2.0, 4, 1)]
    assert got[0][6].year == 2026
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["run_id"] == run.run_id and "rows" not in summary
    assert summary["metrics"]["base"]["overall"]["pass_k"] == {"1": pytest.approx(2 / 3), "2": pytest.approx(2 / 3)}


def test_terminal_summary_has_classes_targets_and_the_comparison(run):
    text = terminal_summary(run, summarize(run.rows))
    assert "configuration base (planner SmolLM2-135M-Instruct)" in text
    assert "configuration bigger (planner ?)" in text
    table = text.split("configuration base")[1].split("targets")[0]
    assert re.search(r"^damage_claim\s+2\s+0\s+100\.0%", table, re.M)  # runs, open, accuracy
    assert re.search(r"^ALL\s+6\s+2\s+66\.7%", table, re.M)  # the two timed-out runs are open
    assert "[MISS] unsupervised" not in text and "[MET ] unsupervised high-risk actions: 0" in text
    assert "[MISS] escalation recall: 0.0 % (0/2" in text  # bigger resolved what must escalate
    side = text.split("side by side (overall)")[1]
    assert re.search(r"^accuracy\s+66\.7 % \(4/6.*33\.3 % \(2/6", side, re.M)
    assert re.search(r"^pass\^2\s+66\.7%\s+33\.3%", side, re.M)


def test_html_report_is_self_contained_and_escaped(run, tmp_path):
    path = write_html(run, summarize(run.rows), tmp_path / "sub" / "report.html")
    page = path.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "&lt;script&gt;" in page  # the case's reason is shown, escaped
    assert not re.search(r"(src|href)=", page)  # nothing fetched
    assert page.count("<svg") == 2  # accuracy/automation by class, latency distribution
    assert "Side by side" in page and "Outcome against gold" in page
    assert "missing tkt_assign_ticket(team=&#x27;carrier_ops&#x27;)" in page
    confusion = page.split("Outcome against gold")[1]
    assert "<th>gold escalated</th><td class=off>0</td>" not in confusion
    assert "<th>gold escalated</th><td class=none>0</td><td class=ok>2</td>" in confusion  # base
    single = html_report(run.model_copy(update={"configs": ["base"]}), {"base": summarize(run.rows)["base"]})
    assert "Side by side" not in single


def test_charts_handle_gaps_and_empty_data():
    svg = bar_chart(["a", "b"], {"s: accuracy": [0.5, None], "s: automation": [1.0, 0.0]})
    assert svg.count("<rect") == 3 + 2  # three bars (one missing value), two legend swatches
    assert 'height="0.0"' in svg  # a zero share is a bar of no height, still there to hover
    assert "no finished case" in histogram({"base": []})
    hist = histogram({"base": [1.0, 2.0, 2.0], "other": [10.0]}, bins=10, unit="s")
    assert "base: 2 case(s)" in hist and "other: 1 case(s)" in hist


def test_eligibility_against_the_class_gate():
    from opsagent.evals.metrics import group_metrics
    from opsagent.evals.report import eligibility
    from opsagent.policy.modes import GateConfig

    gate = GateConfig(min_cases=10, threshold=0.6)
    good = group_metrics([row(instance_id=f"i{n}", score=1.0) for n in range(12)])
    assert eligibility(good, gate).startswith("eligible: lower bound 0.76")
    few = group_metrics([row(instance_id=f"i{n}", score=1.0) for n in range(8)])
    assert eligibility(few, gate) == "on track: lower bound 0.68, needs 2 more case(s)"
    poor = group_metrics([row(instance_id=f"i{n}", score=float(n % 2)) for n in range(12)])
    assert eligibility(poor, gate).startswith("below: lower bound 0.25 < 0.60")
