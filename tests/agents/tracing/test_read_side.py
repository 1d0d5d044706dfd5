"""The analysts' side: views.sql, the events timeline, the audit and case reports, the trace CLI."""

from __future__ import annotations

import argparse
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from opsagent.agents.tracing import ActionEvent, ApprovalEvent, CaseEvent, PlannerCallEvent, query
from opsagent.agents.tracing.audit import audit, case_timeline
from opsagent.agents.tracing.cli import COMMANDS, add_parser, run, shell
from opsagent.agents.tracing.views import VIEWS_SQL, render_views_sql
from opsagent.agents.tracing.writer import TraceWriter
from opsagent.errors import CaseNotFound

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
S = timedelta(seconds=1)
ARGS = {"shipment_id": "SHP-1", "billed_weight_kg": 12.5, "reason": "scan"}


def _case(case_id: str, status: str, at: datetime, **kw) -> CaseEvent:
    return CaseEvent(case_id=case_id, exception_type=kw.pop("exception_type", "weight_mismatch"),
                     status=status, description="billed 40kg, scanned 12kg",
                     entities={"shipment_id": "SHP-1"}, received_at=T0, recorded_at=at, **kw)


def _action(case_id: str, step: int, at: datetime, **kw) -> ActionEvent:
    fields = dict(case_id=case_id, step=step, tool="tms_adjust_billed_weight", args=ARGS, risk="high",
                  decision="allow", reasons=["approved"], writes=True, executed=True, dry_run=False,
                  started_at=at, finished_at=at + S, policy_version="p1", args_digest="d-" + case_id)
    return ActionEvent(**(fields | kw))


def _approval(case_id: str, status: str, at: datetime, **kw) -> ApprovalEvent:
    return ApprovalEvent(approval_id="apr-" + case_id, case_id=case_id, step=2, tool="tms_adjust_billed_weight",
                         args=ARGS, args_digest="d-" + case_id, status=status, risk="high",
                         preview={"before": {"billed_weight_kg": 40}, "after": {"billed_weight_kg": 12.5}},
                         requested_at=T0 + S, recorded_at=at, **kw)


def history() -> list:
    """C-1 resolved on its own; C-2 approved by alice; C-3 escalated after a rejection;
    C-4 a ticket case still open."""
    return [
        _case("C-1", "received", T0), _case("C-1", "planning", T0 + S),
        PlannerCallEvent(case_id="C-1", step=1, model="smollm2", prompt_digest="p", prompt_tokens=800,
                         completion_tokens=40, output='{"tool": "tms_open_weight_dispute"}', finish_reason="stop",
                         started_at=T0 + S, finished_at=T0 + 2 * S, duration_ms=1000.0),
        _action("C-1", 1, T0 + 3 * S, tool="tms_open_weight_dispute", risk="low", result={"dispute_id": "D-1"}),
        _case("C-1", "resolved", T0 + 10 * S, finished_at=T0 + 10 * S),
        _case("C-2", "received", T0),
        _action("C-2", 2, T0 + S, decision="require_approval", executed=False, dry_run=True),
        _approval("C-2", "pending", T0 + 2 * S),
        _approval("C-2", "approved", T0 + 5 * S, approver="alice", decided_at=T0 + 5 * S, reason="ok"),
        _action("C-2", 2, T0 + 6 * S),
        _case("C-2", "resolved", T0 + 20 * S, finished_at=T0 + 20 * S),
        _case("C-3", "received", T0),
        _action("C-3", 2, T0 + S, decision="require_approval", executed=False, dry_run=True),
        _approval("C-3", "pending", T0 + 2 * S),
        _approval("C-3", "rejected", T0 + 3 * S, approver="bob", decided_at=T0 + 3 * S, reason="no"),
        _case("C-3", "escalated", T0 + 30 * S, finished_at=T0 + 30 * S, reason="human said no"),
        _case("C-4", "planning", T0, exception_type="missing_pod"),
    ]


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    with TraceWriter(tmp_path / "traces") as writer:
        writer.export(history())
    return tmp_path / "traces"


def test_views_sql_is_generated_from_the_records() -> None:
    fix = ('.venv/bin/python -c "from opsagent.agents.tracing.views import render_views_sql as r; '
           "print(r(), end='')\" > agents/tracing/views.sql")
    assert VIEWS_SQL.read_text() == render_views_sql(), f"views.sql is stale; rewrite it: {fix}"


def test_an_analyst_session_reads_the_folder_with_views_sql(traces: Path, monkeypatch) -> None:
    con = duckdb.connect()
    con.execute(f"SET VARIABLE traces = '{traces}'")
    con.execute(VIEWS_SQL.read_text())
    assert con.sql("SELECT count(*) FROM cases").fetchall() == [(4,)]
    con.execute("SET VARIABLE traces = '/no/such/folder'")  # another folder: run the script again
    con.execute(VIEWS_SQL.read_text())
    assert con.sql("SELECT count(*) FROM cases").fetchall() == [(0,)]
    monkeypatch.chdir(traces.parent)  # no variable set: ./traces
    fresh = duckdb.connect()
    fresh.execute(VIEWS_SQL.read_text())
    assert fresh.sql("SELECT count(*) FROM events").fetchall() == [(17,)]


def test_events_is_every_record_of_a_case_in_time_order(traces: Path) -> None:
    _, rows = query(traces, "SELECT kind, step, summary FROM events WHERE case_id = 'C-2' ORDER BY ts, kind")
    kinds = [r[0] for r in rows]
    assert kinds == ["status", "action", "approval", "approval", "action", "status"]
    assert rows[1][2].startswith("tms_adjust_billed_weight {")
    assert rows[1][2].endswith("-> require_approval (high risk), dry run")
    assert rows[3][2] == "apr-C-2 approved: tms_adjust_billed_weight by alice (ok)"
    assert rows[-1][2] == "resolved"


def test_audit_lists_high_risk_actions_the_invariant_and_per_class_numbers(traces: Path) -> None:
    text = audit(traces)
    assert "high-risk actions: 3" in text
    lines = text.splitlines()
    approved = [line for line in lines if line.startswith("C-2") and "allow" in line]
    assert len(approved) == 1 and "apr-C-2" in approved[0] and "alice" in approved[0]
    assert '"after": {"billed_weight_kg": 12.5}' in approved[0]  # the preview the approver saw
    assert "unsupervised high-risk actions: 0 " in text
    per_class = lines[lines.index(next(l for l in lines if l.startswith("class"))) + 2:]
    assert per_class[0].split() == ["missing_pod", "1", "0", "0", "0", "0", "1", "0.00", "0.00"]
    # weight_mismatch: 3 cases, C-1 automated, C-2 and C-3 asked for approval, C-3 escalated
    assert per_class[1].split() == ["weight_mismatch", "3", "1", "2", "1", "0", "0", "33.30", "33.30",
                                    "20.00", "29.00"]


def test_audit_shows_an_unsupervised_high_risk_action(traces: Path) -> None:
    with TraceWriter(traces) as writer:
        writer.export([_action("C-9", 1, T0)])
    text = audit(traces)
    assert "unsupervised high-risk actions: 1 " in text
    assert any(line.startswith("C-9") and "tms_adjust_billed_weight" in line
               for line in text.split("unsupervised")[1].splitlines())


def test_case_timeline(traces: Path) -> None:
    text = case_timeline(traces, "C-2")
    head, table = text.split("\n\n")
    assert head.splitlines()[0] == "case C-2  weight_mismatch  resolved"
    assert "(20.0 s)" in head.splitlines()[1]
    rows = table.splitlines()[2:]
    assert rows[0].startswith("2025-03-01 09:00:00.000  status") and rows[-1].endswith("resolved")
    assert len(rows) == 6
    with pytest.raises(CaseNotFound, match="C-404"):
        case_timeline(traces, "C-404")


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="opsagent")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.command in COMMANDS
    return run(args)


def test_cli_commands(traces: Path, capsys) -> None:
    assert _cli("audit", "--traces", str(traces)) == 0
    assert "unsupervised high-risk actions: 0" in capsys.readouterr().out
    assert _cli("case", "C-3", "--traces", str(traces)) == 0
    assert "escalated: human said no" in capsys.readouterr().out
    assert _cli("traces", "sql", "SELECT count(*) AS n FROM approvals", "--traces", str(traces), "--csv") == 0
    assert capsys.readouterr().out == "n\n2\n"
    assert _cli("traces", "views-sql") == 0
    assert capsys.readouterr().out == VIEWS_SQL.read_text()
    assert _cli("traces", "views-sql", "--traces", str(traces)) == 0
    assert capsys.readouterr().out.startswith(f"SET VARIABLE traces = '{traces.resolve()}';\n-- opsagent")


def test_shell_runs_statements_and_dot_commands(traces: Path) -> None:
    out = io.StringIO()
    lines = ["SELECT status, count(*) AS n\n", "FROM cases GROUP BY 1 ORDER BY 1;\n", ".tables\n",
             ".mode csv\n", "SELECT case_id FROM cases WHERE status = 'planning';\n", "SELEC nonsense;\n",
             ".schema cases\n", ".bogus\n", ".quit\n", "SELECT 'never run';\n"]
    assert shell(traces, iter(lines), out) == 0
    text = out.getvalue()
    assert "escalated  1\nplanning   1\nresolved   2\n(3 rows)" in text
    assert "approval_events" in text and "events" in text
    assert "case_id\nC-4\n(1 rows)" in text
    assert "Error: Parser Error" in text and "unknown command '.bogus'" in text
    assert "schema_version" in text and "never run" not in text


def test_reading_commands_print_json_and_fail_with_exit_1(traces: Path, capsys) -> None:
    import json

    from opsagent.agents.tracing.audit import AUTOMATION_MEANING
    from opsagent.cli import main

    assert main(["audit", "--traces", str(traces), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["unsupervised_high_risk"] == 0 and len(data["high_risk_actions"]) == 3
    assert data["automation"] == {"cases": 4, "automated": 1, "open": 1, "rate": 0.25,
                                  "meaning": AUTOMATION_MEANING}
    by_class = {r["class"]: r for r in data["per_class"]}
    assert by_class["weight_mismatch"]["automated"] == 1 and by_class["missing_pod"]["open"] == 1
    assert main(["case", "C-2", "--traces", str(traces), "--json"]) == 0
    case = json.loads(capsys.readouterr().out)
    assert case["case"]["status"] == "resolved" and len(case["events"]) == 6
    assert case["events"][0]["ts"].startswith("2025-03-01T09:00:00")
    assert main(["traces", "sql", "SELECT case_id, status FROM cases ORDER BY 1", "--traces", str(traces),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0] == {"case_id": "C-1", "status": "resolved"}
    assert main(["case", "C-404", "--traces", str(traces), "--json"]) == 1  # a runtime failure
    assert "no trace of case 'C-404'" in capsys.readouterr().err
    assert main(["traces", "sql", "SELEC 1", "--traces", str(traces)]) == 1
    for usage_error in (["traces", "sql", "SELECT 1", "--json", "--csv"], ["audit", "--no-such-option"]):
        with pytest.raises(SystemExit) as usage:
            main(usage_error)
        assert usage.value.code == 2


def test_traces_sql_tables_are_drawn_by_duckdb(traces: Path, capsys) -> None:
    from opsagent.cli import main

    sql = "SELECT NULL AS nothing, 0.000123 AS small, 'two' || chr(10) || 'lines' AS text, count(*) AS n FROM cases"
    assert main(["traces", "sql", sql, "--traces", str(traces)]) == 0
    out = capsys.readouterr().out
    assert "┌" in out and "NULL" in out and "0.000123" in out and "two\\nlines" in out
    assert "int64" in out  # DuckDB's header shows the types


def test_one_meaning_of_automation_in_the_audit_and_the_overview(traces: Path) -> None:
    from opsagent.cluster.api.trace_reads import TraceReads

    text = audit(traces)
    assert "automation: 25.0 % (1 of 4 cases; 1 open)" in text
    figures = TraceReads(traces)._overview()
    assert figures["automation_rate"] == 0.25 and figures["automated"] == 1 and figures["open_cases"] == 1
    weight = next(c for c in figures["per_class"] if c.exception_type == "weight_mismatch")
    assert (weight.automated, weight.cases, weight.open) == (1, 3, 0)
