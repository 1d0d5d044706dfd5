"""The deployment files: cluster/serve_config.yaml and the KubeRay RayService manifest parse as
Serve configs and agree with the system config; the application builder refuses bad arguments;
and the builder's application really runs on Ray (planner on an OpenAI-compatible stand-in,
sandbox systems of record), as `serve run cluster/serve_config.yaml` runs it."""

from __future__ import annotations

import json
import socket
import time
from importlib import import_module
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi import FastAPI
from ray import serve
from ray.serve.schema import ServeDeploySchema

from opsagent.cluster.config import SystemConfig
from opsagent.cluster.deploy import SYSTEMS_ENV, DeployArgs, build
from opsagent.errors import ConfigError
from opsagent.policy.identity import TokenStore
from opsagent.tools.sources import load_sources
from tests.fakes.local_actors import ThreadedServer
from opsagent.policy.state import state_db, state_url

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def _builder(application: dict):
    module, _, name = application["import_path"].partition(":")
    return getattr(import_module(module), name)


def test_the_serve_config_parses_and_names_the_builder():
    config = ServeDeploySchema.model_validate(yaml.safe_load((CLUSTER / "serve_config.yaml").read_text()))
    (application,) = config.applications
    assert application.import_path == "opsagent.cluster.deploy:build"
    assert _builder({"import_path": application.import_path}) is build
    DeployArgs.model_validate(application.args)
    assert {d.name for d in application.deployments} == {"opsagent-api", "opsagent-system"}


def test_the_rayservice_puts_the_planner_on_gpus_and_the_executors_on_cpus(tmp_path):
    documents = list(yaml.safe_load_all((CLUSTER / "kuberay" / "rayservice.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    service = next(d for d in documents if d["kind"] == "RayService")
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (application,) = serve_config.applications
    args = DeployArgs.model_validate(application.args)
    assert args.config_path == "/etc/opsagent/system.yaml" and args.tool_sources
    system = SystemConfig.model_validate(yaml.safe_load(config_map["data"]["system.yaml"]))
    (tmp_path / "sources.yaml").write_text(config_map["data"]["sources.yaml"])
    assert load_sources(tmp_path / "sources.yaml")

    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu, cpu = groups["gpu-planner"], groups["cpu-executors"]
    assert system.planner.actor_options["num_gpus"] == 1
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    slots = json.loads(yaml.safe_load(cpu["rayStartParams"]["resources"]))
    wanted = system.executor_actor_options["resources"]
    assert set(wanted) <= set(slots) and "resources" not in gpu["rayStartParams"]
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    mounts = head["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(Path(system.state_dir).is_relative_to(m["mountPath"]) for m in mounts)


def test_the_rayservice_keeps_state_in_postgresql_and_the_trace_log_on_local_disk(monkeypatch):
    """The state URL comes from a secret on every pod; no SQLite file on the shared volume; the
    trace WAL on node-local disk; one cluster at a time (upgradeStrategy None: the case manager's
    lease admits one system per database); fields KubeRay no longer reads are gone; worker group
    bounds take effect (in-tree autoscaling)."""
    documents = list(yaml.safe_load_all((CLUSTER / "kuberay" / "rayservice.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    service = next(d for d in documents if d["kind"] == "RayService")
    system = SystemConfig.model_validate(yaml.safe_load(config_map["data"]["system.yaml"]))
    assert system.state == "env:OPSAGENT_STATE_URL"
    spec = service["spec"]
    assert spec["upgradeStrategy"] == {"type": "None"}
    assert not {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"} & set(spec)
    cluster = spec["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in pods:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        state = [e for e in container["env"] if e["name"] == "OPSAGENT_STATE_URL"]
        assert state == [{"name": "OPSAGENT_STATE_URL",
                          "valueFrom": {"secretKeyRef": {"name": "opsagent-state", "key": "url"}}}]
        shared = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        local = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        under = lambda path: next(n for p, n in mounts.items() if Path(path).is_relative_to(p))  # noqa: E731
        assert under(system.trace_wal_dir) in local and under(system.state_dir) in local
        assert under(system.traces_dir) in shared
    monkeypatch.setenv("OPSAGENT_STATE_URL", "postgresql://ops:pw@db:5432/opsagent")
    assert state_url(system.state_url()) == "postgresql://ops:pw@db:5432/opsagent"


def test_only_the_policy_pod_mounts_the_permit_signing_key():
    """Hole 1 in the manifest: no pod but the policy's holds signing material, and the policy
    actor can only be placed there."""
    documents = list(yaml.safe_load_all((CLUSTER / "kuberay" / "rayservice.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    service = next(d for d in documents if d["kind"] == "RayService")
    system = SystemConfig.model_validate(yaml.safe_load(config_map["data"]["system.yaml"]))
    cluster = service["spec"]["rayClusterConfig"]
    pods = {"head": cluster["headGroupSpec"]} | {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    holders = set()
    for name, group in pods.items():
        spec = group["template"]["spec"]
        text = json.dumps(spec)
        assert "OPSAGENT_PERMIT_KEY\"" not in text and "permit-key" not in text
        secrets_ = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        envs = {e["name"] for c in spec["containers"] for e in c.get("env", [])}
        if "opsagent-permit-signing-key" in secrets_ or "OPSAGENT_PERMIT_SIGNING_KEY" in envs:
            holders.add(name)
    assert holders == {"policy"}
    policy = pods["policy"]
    offered = json.loads(yaml.safe_load(policy["rayStartParams"]["resources"]))
    wanted = system.policy_actor_options["resources"]
    assert set(wanted) <= set(offered)
    assert all(set(wanted).isdisjoint(json.loads(yaml.safe_load(g["rayStartParams"].get("resources", '"{}"'))))
               for n, g in pods.items() if n != "policy")


def test_the_builder_refuses_bad_arguments(monkeypatch):
    monkeypatch.delenv(SYSTEMS_ENV, raising=False)
    monkeypatch.delenv("OPSAGENT_TOOL_SOURCES", raising=False)
    with pytest.raises(ConfigError, match="no systems of record"):
        build({})
    with pytest.raises(ConfigError, match="nope"):
        build({"sandbox": True, "nope": 1})
    with pytest.raises(ConfigError, match="limits"):
        build({"sandbox": True, "api": {"limits": {"max_body_bytes": 1}}})
    monkeypatch.setenv(SYSTEMS_ENV, "{not json")
    with pytest.raises(ConfigError):
        build({})
    monkeypatch.setenv(SYSTEMS_ENV, json.dumps({"tms": "http://tms:8000"}))
    assert DeployArgs.model_validate({}).systems == {"tms": "http://tms:8000"}


def _escalating_openai_server() -> FastAPI:
    """An OpenAI-compatible stand-in whose every answer ends the case (escalated)."""
    api = FastAPI()

    @api.post("/v1/chat/completions")
    async def complete(body: dict) -> dict:
        step = {"evidence": {"scale_check": "unknown"}, "tool": "finish", "status": "escalated",
                "reason": "stand-in planner"}
        return {"model": body["model"], "usage": {"prompt_tokens": 1, "completion_tokens": 1},
                "choices": [{"message": {"content": json.dumps(step)}, "finish_reason": "stop"}]}

    return api


@pytest.mark.ray
def test_the_built_application_runs_on_ray(ray_runtime, tmp_path):
    with ThreadedServer(_escalating_openai_server()) as planner_server:
        config = {"planner": {"engine": "openai", "warm_classes": [],
                              "openai": {"base_url": f"{planner_server.url}/v1", "model": "stand-in"}},
                  "executors": 1, "state_dir": str(tmp_path / "state"), "traces_dir": str(tmp_path / "traces")}
        # The replicas read the file, not this process's config: pin the state database the suite
        # gives this system (its state folder's SQLite file, or a PostgreSQL database) in it.
        config["state"] = SystemConfig.model_validate(config).state_url()
        (tmp_path / "system.yaml").write_text(yaml.safe_dump(config))
        token = TokenStore(config["state"]).add("ops", ["submitter", "auditor"])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            serve.run(build({"config_path": str(tmp_path / "system.yaml"), "sandbox": True}),
                      name="opsagent", route_prefix="/")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                              headers={"Authorization": f"Bearer {token}"}) as client:
                assert client.get("/v1/health").json()["status"] == "ok"
                assert client.get("/console/login").status_code == 200
                r = client.post("/v1/exceptions", json={
                    "exception_type": "weight_mismatch", "description": "billed 2 kg, scanned 1 kg",
                    "entities": {"shipment_id": "SHP-000001"}})
                assert r.status_code == 202, r.text
                case_id = r.json()["case_id"]
                deadline = time.monotonic() + 60
                while (view := client.get(f"/v1/cases/{case_id}").json())["status"] not in ("escalated", "failed"):
                    assert time.monotonic() < deadline, view
                    time.sleep(0.2)
            assert view["status"] == "escalated" and view["reason"] == "stand-in planner"
        finally:
            serve.shutdown()


def test_the_environment_configures_the_built_app(monkeypatch):
    """`app` (what `serve build` takes) reads its arguments in the replicas, from the environment."""
    from opsagent.cluster.deploy import API_ENV, SANDBOX_ENV, _parse

    monkeypatch.setenv(SANDBOX_ENV, "1")
    monkeypatch.setenv(API_ENV, json.dumps({"limits": {"window_s": 5}}))
    parsed = _parse(None)
    assert parsed.sandbox and parsed.api == {"limits": {"window_s": 5}}
    monkeypatch.setenv(API_ENV, "{not json")
    with pytest.raises(ConfigError, match="not JSON"):
        _parse(None)
    monkeypatch.delenv(SANDBOX_ENV)
    monkeypatch.delenv(API_ENV)
    monkeypatch.delenv(SYSTEMS_ENV, raising=False)
    monkeypatch.delenv("OPSAGENT_TOOL_SOURCES", raising=False)
    with pytest.raises(ConfigError, match="no systems of record"):
        _parse(None)


def test_the_api_takes_its_files_from_the_system_replica(tmp_path):
    """The front door's files come from the system replica's config; arguments given to the API
    deployment itself win."""
    import asyncio

    from opsagent.cluster.serve_app import OpsAgentAPI

    class _Method:
        def __init__(self, value):
            self.value = value

        async def remote(self):
            return self.value

    class _System:
        actors = _Method({"cases": None, "policy": None, "api": {
            "tokens_path": f"sqlite:///{tmp_path}/state/state.sqlite", "traces_dir": str(tmp_path / "traces"),
            "limits": {"window_s": 60, "requests_per_window": 600}}})

    # the class as written, under Serve's ingress wrapper (whose constructor is Serve's own)
    mine = next(c for c in OpsAgentAPI.func_or_class.__mro__ if "__serve_build_asgi_app__" in vars(c))
    api = mine.__new__(mine)
    mine.__init__(api, {"limits": {"window_s": 5}}, system=_System())
    built = asyncio.run(mine.__serve_build_asgi_app__(api))
    assert built.state.service.traces.root == str(tmp_path / "traces")
    assert built.state.service.tokens.path == f"sqlite:///{tmp_path}/state/state.sqlite"
    assert built.state.auth.limiter.window_s == 5
