"""Prometheus metrics through Ray: `ray.util.metrics` instruments, exported by every node's metrics
agent on Ray's metrics endpoint (`ray start --metrics-export-port`, `start_ray(metrics_export_port=)`)
as `ray_<name>` (histograms as `ray_<name>_bucket`, `_sum`, `_count`).

`METRICS` is the one list of what opsagent exports; the Grafana dashboard (grafana/opsagent.json)
is built on exactly these names (tests/cluster/test_metrics.py checks it). Each actor records what
it sees: the case manager cases, the planner actors planner calls, the executors tool calls, the
policy actor decisions and approvals. vLLM's own engine metrics (`ray_vllm_*`) come from vLLM's
`RayPrometheusStatLogger`, which the planner actor turns on in its engine (`VllmEngine.ray_metrics`).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

PREFIX = "ray_"  # Ray's metrics agent prefixes every application metric

GAUGE_REFRESH_S = 5.0
"""How often every gauge's last value is set again. Ray's metrics agent stops exporting a gauge its
process has not set lately (measured on Ray 2.60: about 20 s after the last set, whatever the report
interval), so a gauge set once, such as the unsupervised high-risk count at 0, would vanish."""

LATENCY_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
"""Seconds: from a rule-decided step to a case that waited an hour."""


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: its name (without Ray's prefix), kind, description and tag keys."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    tags: tuple[str, ...] = ()
    boundaries: list[float] = field(default_factory=list)

    def exported(self) -> list[str]:
        """The series names Prometheus scrapes for this metric."""
        base = PREFIX + self.name
        if self.kind == "histogram":
            return [f"{base}_bucket", f"{base}_sum", f"{base}_count"]
        return [base]


METRICS: dict[str, MetricSpec] = {m.name: m for m in [
    MetricSpec("opsagent_cases_received_total", "counter", "Cases opened.", ("exception_type",)),
    MetricSpec("opsagent_cases_total", "counter",
               "Cases that reached a final status (resolved, escalated, failed, proposed).",
               ("exception_type", "status")),
    MetricSpec("opsagent_cases_open", "gauge",
               "Cases in flight now, by their current status (case manager's view).",
               ("exception_type", "status")),
    MetricSpec("opsagent_case_duration_seconds", "histogram",
               "From receipt to final status, approval waits included.",
               ("exception_type", "status"), LATENCY_BUCKETS),
    MetricSpec("opsagent_approvals_pending", "gauge", "Held actions waiting for a human decision."),
    MetricSpec("opsagent_approval_oldest_pending_age_seconds", "gauge",
               "Age of the oldest pending approval (0 when none is pending)."),
    MetricSpec("opsagent_approval_events_total", "counter",
               "Approval events: with a webhook each one notified (requested, expiring, decided, "
               "expired); without, those the actor makes (requested, decided, expired by withdrawal "
               "or superseding).", ("event",)),
    MetricSpec("opsagent_policy_decisions_total", "counter", "Policy verdicts on proposed tool calls.",
               ("exception_type", "tool", "verdict")),
    MetricSpec("opsagent_policy_denials_total", "counter",
               "Denials by the check that decided them (approval_mismatch: an approval for other "
               "arguments).", ("exception_type", "check")),
    MetricSpec("opsagent_unsupervised_high_risk_actions", "gauge",
               "High-risk actions the policy allowed without a human approval since the policy "
               "actor started. Must stay 0: alert on anything else."),
    MetricSpec("opsagent_planner_calls_total", "counter",
               "Planner turns (decided_by: model, or rule when the playbook left one step).",
               ("model", "decided_by")),
    MetricSpec("opsagent_planner_errors_total", "counter", "Planner turns whose output was unusable.",
               ("model",)),
    MetricSpec("opsagent_planner_tokens_total", "counter", "Planner tokens (kind: prompt, completion).",
               ("model", "kind")),
    MetricSpec("opsagent_planner_latency_seconds", "histogram", "Duration of one model call.",
               ("model",), [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]),
    MetricSpec("opsagent_executor_calls_total", "counter",
               "Tool calls sent to systems of record (dry_run: true for previews).",
               ("system", "tool", "dry_run")),
    MetricSpec("opsagent_executor_errors_total", "counter", "Tool calls that failed.",
               ("system", "tool")),
    MetricSpec("opsagent_executor_latency_seconds", "histogram", "Duration of one tool call.",
               ("system",), [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]),
    MetricSpec("opsagent_webhook_deliveries_total", "counter",
               "Approval webhook delivery attempts (outcome: delivered, retry, failed).",
               ("event", "outcome")),
]}

VLLM_METRICS: dict[str, Literal["counter", "gauge", "histogram"]] = {
    "vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge", "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter", "vllm:prefix_cache_queries": "counter",
    "vllm:prefix_cache_hits": "counter", "vllm:time_to_first_token_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram", "vllm:inter_token_latency_seconds": "histogram",
}
"""vLLM's own metrics the dashboard shows, as vLLM names them (vllm/v1/metrics/loggers.py)."""


def vllm_exported_names() -> set[str]:
    """The series names Ray exports vLLM's metrics as: `vllm:x` becomes `ray_vllm_x`, a counter
    gets `_total`, a histogram `_bucket`, `_sum` and `_count`."""
    names = set()
    for name, kind in VLLM_METRICS.items():
        base = PREFIX + name.replace(":", "_")
        names |= ({f"{base}_total"} if kind == "counter" else
                  {f"{base}_bucket", f"{base}_sum", f"{base}_count"} if kind == "histogram" else {base})
    return names


def exported_names() -> set[str]:
    """Every series name opsagent's own metrics export."""
    return {name for spec in METRICS.values() for name in spec.exported()}


class Metrics:
    """The instruments, created in the process that records (an actor), tag values as strings.
    Each gauge's last value per tag set is kept and set again every `GAUGE_REFRESH_S` by one
    thread of the process, so a gauge stays exported between its changes.

    Recording never raises: a metric that cannot be recorded is not worth a failed case."""

    def __init__(self, names: Iterable[str] | None = None) -> None:
        from ray.util import metrics as ray_metrics

        self._instruments: dict[str, Any] = {}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._lock = threading.Lock()
        for name in (names if names is not None else METRICS):
            spec = METRICS[name]
            if spec.kind == "counter":
                inst = ray_metrics.Counter(spec.name, description=spec.description, tag_keys=spec.tags)
            elif spec.kind == "gauge":
                inst = ray_metrics.Gauge(spec.name, description=spec.description, tag_keys=spec.tags)
            else:
                inst = ray_metrics.Histogram(spec.name, description=spec.description,
                                             boundaries=spec.boundaries, tag_keys=spec.tags)
            self._instruments[name] = inst

    def inc(self, name: str, value: float = 1.0, **tags: Any) -> None:
        if value > 0:
            self._record(name, "inc", value, tags)

    def set(self, name: str, value: float, **tags: Any) -> None:
        key = (name, tuple(sorted((k, str(v)) for k, v in tags.items())))
        with self._lock:  # a refresh never sets a value older than this one after it
            self._gauges[key] = value
            self._record(name, "set", value, tags)
        _refresher.keep(self)

    def refresh(self) -> None:
        """Set every gauge again to its last value."""
        with self._lock:
            for (name, tags), value in self._gauges.items():
                self._record(name, "set", value, dict(tags))

    def observe(self, name: str, value: float, **tags: Any) -> None:
        self._record(name, "observe", max(0.0, value), tags)

    def _record(self, name: str, method: str, value: float, tags: dict[str, Any]) -> None:
        try:
            getattr(self._instruments[name], method)(value, tags={k: str(v) for k, v in tags.items()})
        except Exception as exc:  # noqa: BLE001 - never fail the caller for a metric
            import logging

            logging.getLogger(__name__).warning("metric %s not recorded: %s", name, exc)


class _GaugeRefresher:
    """The process's one thread that sets the gauges of every live `Metrics` again."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._live: weakref.WeakSet[Metrics] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def keep(self, metrics: Metrics) -> None:
        with self._lock:
            self._live.add(metrics)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="opsagent-gauge-refresh", daemon=True)
                self._thread.start()

    def _run(self) -> None:  # a daemon thread: it ends with its process
        while True:
            time.sleep(self.every_s)
            with self._lock:
                live = list(self._live)
            for metrics in live:
                metrics.refresh()


_refresher = _GaugeRefresher(GAUGE_REFRESH_S)
