"""vLLM's own engine metrics through Ray: the planner actor hands the real engine vLLM's
`RayPrometheusStatLogger`, and every vLLM name the dashboard uses is on Ray's metrics endpoint."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from opsagent.agents.case import Case
from opsagent.agents.engines.vllm_engine import VllmEngine, VllmEngineConfig
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.cluster.actors import PlannerActor
from opsagent.cluster.metrics import vllm_exported_names
from opsagent.cluster.runtime import start_ray, stop_ray
from opsagent.policy.config import load_default_policy

pytestmark = [pytest.mark.engine, pytest.mark.ray]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + s.value
    return totals


def test_the_engines_metrics_reach_rays_endpoint(platform):
    port = _free_port()
    start_ray(num_cpus=2, metrics_export_port=port, metrics_report_interval_ms=1000)
    planner = None
    try:
        registry = platform.registry()
        playbooks = {"weight_mismatch": builtin_playbooks()["weight_mismatch"]}
        planner = PlannerActor.options(num_cpus=0).remote(
            VllmEngine(VllmEngineConfig()), playbooks, registry,
            {"decoding": "schema", "max_tokens": 40})  # a step of several tokens: inter-token latency
        ray.get(planner.start.remote(), timeout=600)
        allowed = list(load_default_policy().classes["weight_mismatch"].tools)
        assert ray.get(planner.warm_up.remote({"weight_mismatch": allowed}), timeout=600) > 0
        case = Case(report=playbooks["weight_mismatch"].examples[0].report)
        turn = ray.get(planner.plan.remote(case, allowed), timeout=600)
        assert turn.generation is not None and turn.generation.completion_tokens > 1
        deadline, seen = time.monotonic() + 60, {}
        while time.monotonic() < deadline:
            seen = _scrape(port)
            if vllm_exported_names() <= set(seen) and seen.get("ray_vllm_prompt_tokens_total", 0) > 0:
                break
            time.sleep(1)
        assert vllm_exported_names() <= set(seen), sorted(vllm_exported_names() - set(seen))
        assert seen["ray_vllm_prompt_tokens_total"] > 0
        assert seen["ray_vllm_e2e_request_latency_seconds_count"] >= 1
    finally:
        if planner is not None:
            try:
                ray.get(planner.close.remote(), timeout=60)
            except Exception:
                pass
        stop_ray()
