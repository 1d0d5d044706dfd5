"""The metrics opsagent exports (cluster/metrics.py), the rules that record them (cluster/observe.py)
with a recording fake, and the Grafana dashboard built on exactly these names. The scrape of Ray's
metrics endpoint during a run is in test_operating.py."""

from __future__ import annotations

import importlib.util
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import opsagent.cluster
from opsagent.agents.tracing.records import CaseEvent
from opsagent.cluster.metrics import METRICS, VLLM_METRICS, exported_names, vllm_exported_names
from opsagent.cluster.observe import (
    CaseMetrics, is_unsupervised_high_risk, record_approvals, record_decision, record_turn,
)

DASHBOARD = Path(opsagent.cluster.__file__).parent / "grafana" / "opsagent.json"


class Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, dict]] = []

    def inc(self, name, value=1.0, **tags):
        self.calls.append(("inc", name, value, tags))

    def set(self, name, value, **tags):
        self.calls.append(("set", name, value, tags))

    def observe(self, name, value, **tags):
        self.calls.append(("observe", name, value, tags))

    def total(self, name, **tags):
        return sum(v for m, n, v, t in self.calls if n == name and m == "inc"
                   and all(t.get(k) == w for k, w in tags.items()))

    def last(self, name, **tags):
        values = [v for m, n, v, t in self.calls if n == name and m == "set" and t == tags]
        return values[-1] if values else None


def _dashboard_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    return {name for e in exprs for name in re.findall(r"\b(ray_[A-Za-z0-9_]+)", e)}


def test_every_metric_on_the_dashboard_is_exported_and_every_export_is_on_it():
    used = _dashboard_names()
    assert used <= exported_names() | vllm_exported_names(), used - exported_names() - vllm_exported_names()
    shown = {name for spec in METRICS.values() for name in spec.exported() if name in used}
    missing = {spec.name for spec in METRICS.values() if not set(spec.exported()) & shown}
    assert not missing, f"exported but on no panel: {missing}"


def test_the_vllm_names_are_vllms_own():
    spec = importlib.util.find_spec("vllm")  # located, not imported (that takes a torch import)
    assert spec is not None and spec.origin, "vLLM is not installed"
    source = (Path(spec.origin).parent / "v1" / "metrics" / "loggers.py").read_text()
    for name, kind in VLLM_METRICS.items():
        at = source.find(f'"{name}"')
        assert at > 0, f"vLLM defines no {name}"
        created = source.rfind("_cls(", 0, at)
        assert source[created - len(kind) - 1:created] == f"_{kind}", (name, source[created - 20:created])


def test_metric_names_follow_prometheus_conventions():
    for spec in METRICS.values():
        assert re.fullmatch(r"opsagent_[a-z_]+", spec.name)
        assert spec.name.endswith("_total") == (spec.kind == "counter"), spec.name
        assert spec.kind != "histogram" or spec.boundaries == sorted(spec.boundaries)


def _status(case_id, status, at=0.0, cls="weight_mismatch"):
    t0 = datetime(2026, 12, 5, tzinfo=UTC)
    return CaseEvent(case_id=case_id, exception_type=cls, status=status, description="d", entities={},
                     received_at=t0, finished_at=t0 + timedelta(seconds=at) if at else None)


def test_cases_are_counted_once_and_the_open_gauge_returns_to_zero():
    rec = Recorded()
    cases = CaseMetrics(rec)
    cases.observe([_status("c1", "received"), _status("c1", "planning"), _status("c2", "received")])
    assert rec.last("opsagent_cases_open", exception_type="weight_mismatch", status="planning") == 1
    assert rec.last("opsagent_cases_open", exception_type="weight_mismatch", status="received") == 1
    cases.observe([_status("c1", "resolved", at=12.5)])
    cases.observe([_status("c1", "resolved", at=12.5)])  # the same final status traced again
    cases.observe([_status("c2", "awaiting_approval"), _status("c2", "escalated", at=30.0)])
    assert rec.total("opsagent_cases_received_total") == 2
    assert rec.total("opsagent_cases_total", status="resolved") == 1
    assert rec.total("opsagent_cases_total", status="escalated") == 1
    assert [v for m, n, v, t in rec.calls if n == "opsagent_case_duration_seconds"] == [12.5, 30.0]
    for status in ("received", "planning"):
        assert rec.last("opsagent_cases_open", exception_type="weight_mismatch", status=status) == 0
    # paused and ended within one batch: never shown as open
    assert rec.last("opsagent_cases_open", exception_type="weight_mismatch", status="awaiting_approval") is None


def _decision(verdict, risk=None, checks=()):
    return SimpleNamespace(verdict=verdict, risk=risk, checks=list(checks))


def test_decisions_denials_by_check_and_the_unsupervised_rule():
    rec = Recorded()
    record_decision(rec, "weight_mismatch", "tms_adjust", _decision("deny", checks=["known_class", "scope"]), False)
    record_decision(rec, "weight_mismatch", "tms_adjust", _decision("deny"), False)
    record_decision(rec, "weight_mismatch", "tms_adjust", _decision("allow", "high"), True)
    assert rec.total("opsagent_policy_decisions_total", verdict="deny") == 2
    assert rec.total("opsagent_policy_denials_total", check="scope") == 1
    assert rec.total("opsagent_policy_denials_total", check="approval_mismatch") == 1
    assert is_unsupervised_high_risk(_decision("allow", "high"), approved=False)
    assert not is_unsupervised_high_risk(_decision("allow", "high"), approved=True)
    assert not is_unsupervised_high_risk(_decision("require_approval", "high"), approved=False)
    assert not is_unsupervised_high_risk(_decision("allow", "low"), approved=False)


def test_planner_turns_and_approvals():
    rec = Recorded()
    t0 = datetime(2026, 12, 5, tzinfo=UTC)
    g = SimpleNamespace(prompt_tokens=100, completion_tokens=8, duration_ms=1500.0)
    record_turn(rec, "m", SimpleNamespace(generation=g, decided_by="model", step=object()))
    record_turn(rec, "m", SimpleNamespace(generation=None, decided_by="rule", step=object()))
    record_turn(rec, "m", SimpleNamespace(generation=g, decided_by=None, step=None))
    assert rec.total("opsagent_planner_calls_total", decided_by="model") == 2
    assert rec.total("opsagent_planner_calls_total", decided_by="rule") == 1
    assert rec.total("opsagent_planner_tokens_total", kind="prompt") == 200
    assert rec.total("opsagent_planner_errors_total") == 1
    record_approvals(rec, [SimpleNamespace(requested_at=t0), SimpleNamespace(requested_at=t0 + timedelta(minutes=5))],
                     t0 + timedelta(minutes=10))
    assert rec.last("opsagent_approvals_pending") == 2
    assert rec.last("opsagent_approval_oldest_pending_age_seconds") == 600
    record_approvals(rec, [], t0)
    assert rec.last("opsagent_approval_oldest_pending_age_seconds") == 0
