"""One source for deployment: the manifest's serveConfigV2 is generated from the Serve config and
both validate with Ray's own ServeDeploySchema; `serve build` takes the application; nothing is
placed on the head; Serve waits for the system's own shutdown."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.serve import Application
from ray.serve.schema import ServeDeploySchema

from opsagent.cli import main
from opsagent.cluster.config import SystemConfig
from opsagent.cluster.deploy import GRACEFUL_SHUTDOWN_S, SHUTDOWN_S, SystemHost, app
from opsagent.cluster.manifest import MANIFEST, SERVE_CONFIG, render_manifest, serve_config_v2
from opsagent.errors import ConfigError

FIX = "opsagent deploy render-manifest"


def _manifest() -> tuple[dict, dict]:
    documents = list(yaml.safe_load_all(MANIFEST.read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    service = next(d for d in documents if d["kind"] == "RayService")
    return config_map, service


def _serve_config_v2() -> dict:
    return yaml.safe_load(_manifest()[1]["spec"]["serveConfigV2"])


def test_the_manifest_is_generated_from_the_serve_config() -> None:
    text = MANIFEST.read_text()
    assert render_manifest(text, serve_config_v2()) == text, f"serveConfigV2 is stale: run `{FIX}`"
    assert _serve_config_v2() == serve_config_v2()


def test_both_files_validate_with_serves_own_schema() -> None:
    for config in (yaml.safe_load(SERVE_CONFIG.read_text()), _serve_config_v2()):
        schema = ServeDeploySchema.model_validate(config)
        (application,) = schema.applications
        assert application.import_path == "opsagent.cluster.deploy:build"


def test_the_check_fails_on_a_hand_edited_manifest(tmp_path: Path, capsys) -> None:
    edited = tmp_path / "rayservice.yaml"
    edited.write_text(MANIFEST.read_text().replace("num_replicas: 2", "num_replicas: 3"))
    assert main(["deploy", "render-manifest", "--manifest", str(edited), "--check"]) == 1
    assert FIX in capsys.readouterr().out
    assert main(["deploy", "render-manifest", "--manifest", str(edited)]) == 0
    assert edited.read_text() == MANIFEST.read_text()  # only the block was rewritten
    assert main(["deploy", "render-manifest", "--manifest", str(edited), "--check"]) == 0


def test_overrides_naming_nothing_are_refused(tmp_path: Path) -> None:
    bad_app = tmp_path / "a.yaml"
    bad_app.write_text("applications: [{name: opsagnet, args: {}}]\n")
    with pytest.raises(ConfigError, match="application 'opsagnet' is not in serve_config.yaml"):
        serve_config_v2(overrides=bad_app)
    bad_deployment = tmp_path / "d.yaml"
    bad_deployment.write_text("applications: [{name: opsagent, deployments: [{name: api, num_replicas: 2}]}]\n")
    with pytest.raises(ConfigError, match="deployment 'api' is not in the base"):
        serve_config_v2(overrides=bad_deployment)
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text("applications: [{name: opsagent, deployments: [{name: opsagent-api, replicas: 2}]}]\n")
    with pytest.raises(ConfigError, match="unknown key 'replicas' in applications.opsagent.deployments.opsagent-api"):
        serve_config_v2(overrides=bad_key)


def test_serve_build_takes_the_application(tmp_path: Path) -> None:
    assert isinstance(app, Application)
    out = tmp_path / "built.yaml"
    serve = Path(sys.executable).with_name("serve")
    done = subprocess.run([str(serve), "build", "opsagent.cluster.deploy:app", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (application,) = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text())).applications
    deployments = {d.name: d for d in application.deployments}
    assert set(deployments) == {"opsagent-api", "opsagent-system"}
    assert deployments["opsagent-system"].graceful_shutdown_timeout_s == GRACEFUL_SHUTDOWN_S


def test_serve_waits_for_the_systems_own_shutdown() -> None:
    assert GRACEFUL_SHUTDOWN_S > SHUTDOWN_S >= 60
    assert SystemHost._deployment_config.graceful_shutdown_timeout_s == GRACEFUL_SHUTDOWN_S
    for config in (yaml.safe_load(SERVE_CONFIG.read_text()), _serve_config_v2()):
        system = next(d for d in config["applications"][0]["deployments"] if d["name"] == "opsagent-system")
        assert system["graceful_shutdown_timeout_s"] > SHUTDOWN_S
    group = _worker_groups()["cpu-executors"]
    assert group["template"]["spec"]["terminationGracePeriodSeconds"] > GRACEFUL_SHUTDOWN_S


def _worker_groups() -> dict[str, dict]:
    return {g["groupName"]: g for g in _manifest()[1]["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def _offers(params: dict) -> dict[str, float]:
    offered = json.loads(yaml.safe_load(params["resources"])) if "resources" in params else {}
    if float(params.get("num-gpus", 0)) > 0:
        offered["GPU"] = float(params["num-gpus"])
    return offered


def _asks(options: dict) -> dict[str, float]:
    asked = dict(options.get("resources", {}))
    if options.get("num_gpus"):
        asked["GPU"] = options["num_gpus"]
    return asked


def test_nothing_is_placed_on_the_head() -> None:
    """The head offers no custom resource and no GPU; every replica and actor asks for one that
    some worker group offers (num_cpus 0 alone would land on the head)."""
    config_map, service = _manifest()
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and _offers(head) == {}
    system = SystemConfig.model_validate(yaml.safe_load(config_map["data"]["system.yaml"]))
    control = system.control_actor_options
    placements = {
        "planner": system.planner.actor_options, "executor": system.executor_actor_options,
        "control actors": control, "policy": {**control, **system.policy_actor_options},
    } | {f"replica {d['name']}": d.get("ray_actor_options", {})
         for d in _serve_config_v2()["applications"][0]["deployments"]}
    groups = {name: _offers(g["rayStartParams"]) for name, g in _worker_groups().items()}
    for what, options in placements.items():
        asked = _asks(options)
        assert asked, f"{what} asks for no resource the head lacks: {options}"
        assert any(set(asked) <= set(offered) for offered in groups.values()), (what, asked)


def test_serve_replicas_run_only_where_the_readiness_probe_asks_the_proxy() -> None:
    """Pods that host no Serve replica run no proxy: they probe the raylet alone and stay out of
    the Serve Service; the pods that do host replicas keep KubeRay's probe."""
    replicas = [_asks(d.get("ray_actor_options", {})) for d in _serve_config_v2()["applications"][0]["deployments"]]
    for name, group in _worker_groups().items():
        hosts_replicas = any(set(asked) <= set(_offers(group["rayStartParams"])) for asked in replicas)
        container = group["template"]["spec"]["containers"][0]
        labels = group["template"].get("metadata", {}).get("labels", {})
        if hosts_replicas:
            assert "readinessProbe" not in container and labels.get("ray.io/serve") != "false", name
        else:
            assert "local_raylet_healthz" in json.dumps(container["readinessProbe"]), name
            assert labels.get("ray.io/serve") == "false", name


def test_every_pod_that_may_host_the_policy_has_the_one_signing_key_and_no_other_pod_has_it() -> None:
    """The policy actor asks for `policy`; every group offering it mounts the signing key secret
    where OPSAGENT_PERMIT_SIGNING_KEY points, so a policy restarted on a new pod (or a second one
    on a second pod of the group) signs with the same key the executors verify; no other pod
    (nor the head) mounts it or names it."""
    config_map, service = _manifest()
    system = SystemConfig.model_validate(yaml.safe_load(config_map["data"]["system.yaml"]))
    asked = _asks({**system.control_actor_options, **system.policy_actor_options})
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]
    pods = {"head": head} | _worker_groups()
    hosts = set()
    for name, group in pods.items():
        spec = group["template"]["spec"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
        (container,) = spec["containers"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        signing = [v for v, secret in secrets.items() if secret == "opsagent-permit-signing-key"]
        if name != "head" and set(asked) <= set(_offers(group["rayStartParams"])):
            hosts.add(name)
            (volume,) = signing
            assert env["OPSAGENT_PERMIT_SIGNING_KEY"].startswith(mounts[volume] + "/"), name
        else:
            assert not signing and "OPSAGENT_PERMIT_SIGNING_KEY" not in env, name
    assert hosts == {"policy"}
