"""Operating the system on Ray: a scripted-planner run with Ray's metrics endpoint scraped (the
counts match the trace: cases counted = cases run, unsupervised high-risk = 0, still exported long
after it was set), OTLP spans received by a local collector with the Parquet trace's ids, and the
approval webhooks received signed."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from opsagent.agents.case import ExceptionReport
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.otlp import OtlpConfig, trace_id_of
from opsagent.agents.tracing.views import query
from opsagent.cluster.config import SystemConfig
from opsagent.cluster.metrics import GAUGE_REFRESH_S
from opsagent.cluster.runtime import start_ray, stop_ray
from opsagent.cluster.system import OpsAgentSystem
from opsagent.cluster.webhooks import WebhookConfig, verify
from opsagent.tools.platform import inject_weight_mismatch
from opsagent.evals.bench.soak import GoldScriptedEngine
from tests.fakes.autonomy import credential
from tests.fakes.held_planner import held_then_decided
from tests.fakes.otlp_receiver import OtlpReceiver
from tests.fakes.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.ray
SECRET = "operating-secret"
VANISHES_AFTER_S = 20.0  # Ray 2.60: how long a gauge not set again stays on the endpoint (measured)
FINAL = {"resolved", "escalated", "failed", "proposed"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(predicate, timeout=90.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"{what} not reached within {timeout} s")


def _scrape(port: int) -> dict[str, list[tuple[dict, float]]]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def _sum(samples, name, **labels) -> float:
    return sum(v for tags, v in samples.get(name, []) if all(tags.get(k) == w for k, w in labels.items()))


@pytest.fixture(scope="module")
def run(platform, tmp_path_factory):
    port = _free_port()
    with OtlpReceiver() as collector, WebhookReceiver(fail_first=1) as hooks:
        start_ray(num_cpus=2, metrics_export_port=port, metrics_report_interval_ms=1000)
        system = None
        try:
            good = inject_weight_mismatch(platform, count=2, seed=9411, suspect_share=0.0)
            risky = inject_weight_mismatch(platform, count=1, seed=9412, suspect_share=0.0)
            engine = GoldScriptedEngine(held_then_decided({r.entities["shipment_id"] for r in risky}))
            traces, state = tmp_path_factory.mktemp("traces"), tmp_path_factory.mktemp("state")
            config = SystemConfig(
                traces_dir=traces, state_dir=state, executors=1,
                otlp=OtlpConfig(endpoint=collector.endpoint),
                approval_webhook=WebhookConfig(url=hooks.url, secret=SECRET, backoff_s=0.2,
                                               console_url="https://ops.example.com"),
                approval_check_interval_s=1.0)
            system = OpsAgentSystem(config, platform.registry(), engine=engine,
                                    playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]}).start()
            started = time.monotonic()  # the policy actor set its gauges before this
            policy, cases = system.handles["policy"], system.handles["cases"]
            pids = _pids(system)
            ray.get(policy.set_mode.remote("weight_mismatch", "autonomous", credential(system.tokens_path),
                                           "test: resolve weight mismatches"))
            ids = [ray.get(cases.submit.remote(ExceptionReport(
                exception_type=i.exception_type, description=i.description, entities=i.entities),
                "ops-submitter")).entry.case.case_id for i in [*good, *risky]]
            held = _until(lambda: [c for c in (ray.get(cases.get.remote(i)) for i in ids)
                                   if c.status == "awaiting_approval"], what="a held case")[0]
            approval = ray.get(policy.get_approval.remote(held.steps[-1].approval_id))
            ray.get(policy.decide_approval.remote(approval.approval_id, credential(
                system.tokens_path, "alice", ["approver"]), True, approval.args_digest))
            ray.get(cases.resume.remote(held.case_id))
            final = _until(lambda: all(ray.get(cases.get.remote(i)).status in FINAL for i in ids) and
                           [ray.get(cases.get.remote(i)) for i in ids], what="every case final")
            system.flush_traces()
            yield dict(system=system, port=port, ids=ids, final=final, traces=traces, collector=collector,
                       hooks=hooks, approval=approval, started=started, pids=pids)
        finally:
            if system is not None:
                system.stop()
            stop_ray()


def _expected_metrics(run) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What Ray's metrics endpoint must show for the run, read from the Parquet trace."""
    traces, n = run["traces"], len(run["ids"])
    (actions, executed, previews), = query(traces, "SELECT count(*), count(*) FILTER (executed), "
                                                   "count(*) FILTER (dry_run) FROM actions")[1]
    (model_calls, prompt_tokens), = query(
        traces, "SELECT count(*), sum(prompt_tokens) FROM planner_calls WHERE decided_by = 'model'")[1]
    assert model_calls > 0
    want = {
        ("ray_opsagent_cases_total", ()): n,
        ("ray_opsagent_cases_total", (("status", "resolved"),)): sum(c.status == "resolved" for c in run["final"]),
        ("ray_opsagent_cases_received_total", (("exception_type", "weight_mismatch"),)): n,
        ("ray_opsagent_case_duration_seconds_count", ()): n,
        ("ray_opsagent_unsupervised_high_risk_actions", ()): 0,  # the must-stay-zero gauge, at zero
        # one decision per traced action; executor calls and previews as traced
        ("ray_opsagent_policy_decisions_total", ()): actions,
        ("ray_opsagent_policy_decisions_total", (("verdict", "require_approval"),)): 1,
        ("ray_opsagent_executor_calls_total", (("dry_run", "false"),)): executed,
        ("ray_opsagent_executor_calls_total", (("dry_run", "true"),)): previews,
        ("ray_opsagent_planner_calls_total", (("decided_by", "model"),)): model_calls,
        ("ray_opsagent_planner_tokens_total", (("kind", "prompt"),)): prompt_tokens,
        ("ray_opsagent_planner_latency_seconds_count", ()): model_calls,
        # approvals: one requested, decided; none pending now
        ("ray_opsagent_approval_events_total", (("event", "approval.requested"),)): 1,
        ("ray_opsagent_approval_events_total", (("event", "approval.decided"),)): 1,
        ("ray_opsagent_approvals_pending", ()): 0,
    }
    return {key: float(value) for key, value in want.items()}


def test_metrics_on_rays_endpoint_match_the_run(run):
    want = _expected_metrics(run)
    seen: dict = {}

    def matches() -> bool:
        samples = _scrape(run["port"])
        # a series that is absent is not a zero: the gauges must be exported
        seen.clear()
        seen.update({key: (_sum(samples, key[0], **dict(key[1])) if key[0] in samples else None)
                     for key in want})
        return seen == want

    # each actor reports its metrics every second, independently: wait until all have
    deadline = time.monotonic() + 90.0
    while not matches() and time.monotonic() < deadline:
        time.sleep(0.5)
    wrong = {k: v for k, v in seen.items() if v != want[k]}
    assert wrong == {}, (f"expected {want}\n{_series(run['port'], {k[0] for k in wrong})}\n"
                         f"actor pids at the start {run['pids']}, now {_pids(run['system'])}; cases recovered "
                         f"{ray.get(run['system'].handles['cases'].recovered_cases.remote())}")


def test_a_gauge_set_once_stays_exported(run):
    """Ray's metrics agent drops a gauge its process has not set for about 20 s: the must-stay-zero
    gauge, set once when the policy actor starts, is still on the endpoint well after that."""
    time.sleep(max(0.0, run["started"] + 2 * VANISHES_AFTER_S - time.monotonic()))
    for _ in range(4):  # over two refresh periods: present on every scrape
        samples = _scrape(run["port"])
        assert "ray_opsagent_unsupervised_high_risk_actions" in samples
        assert _sum(samples, "ray_opsagent_unsupervised_high_risk_actions") == 0.0
        time.sleep(GAUGE_REFRESH_S / 2)


def _pids(system) -> dict[str, int]:
    """The process of each actor (a restarted one has another: its counters start again)."""
    h = system.handles
    return {"cases": ray.get(h["cases"].pid.remote()), "policy": ray.get(h["policy"].pid.remote()),
            "planners": ray.get([p.pid.remote() for p in h["planners"]])}


def _series(port: int, names: set[str]) -> str:
    """Every series of `names` on the endpoint, with the labels that tell the processes apart."""
    samples = _scrape(port)
    return "\n".join(f"{name} {tags} {value}" for name in sorted(names) for tags, value in samples.get(name, []))


def test_spans_reach_the_collector_with_the_trace_ids(run):
    spans = _until(lambda: (s := run["collector"].received()) and
                   len([x for x in s if x.name == "case"]) == len(run["ids"]) and s, what="case spans")
    by_case = {}
    for span in spans:
        by_case.setdefault(span.attributes["opsagent.case_id"], []).append(span)
    assert set(by_case) == set(run["ids"])
    for case_id, case_spans in by_case.items():
        assert {s.trace_id for s in case_spans} == {trace_id_of(case_id)}
        (root,) = [s for s in case_spans if s.name == "case"]
        steps = {s.span_id for s in case_spans if s.name == "step"}
        assert all(s.parent_id == root.span_id for s in case_spans if s.name == "step")
        assert all(s.parent_id in steps for s in case_spans if s.name not in ("case", "step"))
        assert {"plan", "policy.decide", "tool.call"} <= {s.name for s in case_spans}
    stored = {row[0] for table in ("planner_calls", "actions", "approval_events", "case_events")
              for row in query(run["traces"], f"SELECT event_id FROM {table}")[1]}
    spanned = {s.attributes["opsagent.event_id"] for s in spans if s.name != "step"}
    assert spanned <= stored and len(spanned) > 3 * len(run["ids"])


def test_the_approval_webhooks_arrive_signed_after_a_retry(run):
    got = _until(lambda: len(run["hooks"].ok()) >= 2 and run["hooks"].ok(), what="two webhook deliveries")
    assert run["hooks"].requests[0].status == 500  # the receiver failed the first attempt: retried
    assert [r.json["event"] for r in got] == ["approval.requested", "approval.decided"]
    assert all(verify(SECRET, r.headers, r.body) for r in got)
    assert {r.json["approval"]["approval_id"] for r in got} == {run["approval"].approval_id}
    assert got[1].json["approval"]["approver"] == "alice"
    deliveries = ray.get(run["system"].handles["policy"].webhook_deliveries.remote(run["approval"].approval_id))
    assert [(d.event, d.status) for d in deliveries] == [("approval.requested", "delivered"),
                                                          ("approval.decided", "delivered")]
    assert deliveries[0].attempts == 2
