"""The whole system as one Serve application, for `serve run` / `serve deploy` and KubeRay.

`app` is the application builder named by cluster/serve_config.yaml and the RayService manifest
(cluster/kuberay/rayservice.yaml). It binds two deployments:

- `opsagent-system` starts the actors (planner, policy, executors, trace writer, case manager)
  from a `SystemConfig`, placed by their actor options (e.g. the planner on a GPU worker, the
  executors on CPU workers), and keeps them: they live as long as its one replica;
- `opsagent-api` is the front door (/v1 and /console) over those actors.

The system's state folder (tokens, approvals, modes, ledger) and trace store must be reachable
from every node that runs these replicas: a shared volume, or an object store for the traces.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator
from ray import serve
from ray.serve import Application

from opsagent.cluster.config import SystemConfig
from opsagent.cluster.serve_app import ApiArgs, build_app
from opsagent.errors import ConfigError

CONFIG_ENV = "OPSAGENT_CONFIG"
SOURCES_ENV = "OPSAGENT_TOOL_SOURCES"
SYSTEMS_ENV = "OPSAGENT_SYSTEMS"


class DeployArgs(BaseModel):
    """The `args` of the Serve application; each falls back to an environment variable."""

    model_config = {"extra": "forbid"}
    config_path: str | None = Field(
        default_factory=lambda: os.environ.get(CONFIG_ENV),
        description=f"SystemConfig YAML (default: ${CONFIG_ENV}; neither: every default).")
    tool_sources: list[str] = Field(
        default_factory=lambda: [p for p in os.environ.get(SOURCES_ENV, "").split(os.pathsep) if p],
        description=f"Tool source YAML files, the systems of record (default: ${SOURCES_ENV}, "
        "os.pathsep-separated).")
    systems: dict[str, str] = Field(
        default_factory=lambda: json.loads(os.environ.get(SYSTEMS_ENV) or "{}"),
        description=f"System name -> base URL of an OpenAPI service (default: ${SYSTEMS_ENV}, JSON).")
    sandbox: bool = Field(
        default=False, description="Start the sandbox systems of record inside the system "
        "replica and use them (a local demo; never in production).")
    api: dict[str, Any] = Field(
        default_factory=dict, description="ApiArgs fields for the front door (limits, access_log, "
        "max_queued_requests); the actors, tokens and traces come from the system config.")

    @model_validator(mode="after")
    def _some_tools(self) -> "DeployArgs":
        if not (self.tool_sources or self.systems or self.sandbox):
            raise ValueError(f"no systems of record: give tool_sources (or ${SOURCES_ENV}), "
                             f"systems (or ${SYSTEMS_ENV}), or sandbox: true")
        return self

    def system_config(self) -> SystemConfig:
        return SystemConfig.from_yaml(self.config_path) if self.config_path else SystemConfig()


@serve.deployment(name="opsagent-system", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  health_check_period_s=30)
class SystemHost:
    """Starts the system's actors and owns them; `actors()` hands the API what it fronts."""

    def __init__(self, args: dict[str, Any]) -> None:
        from opsagent.cluster.system import OpsAgentSystem

        parsed = DeployArgs.model_validate(args)
        self._platform = None
        registry = self._registry(parsed)
        self._system = OpsAgentSystem(parsed.system_config(), registry).start()

    def _registry(self, args: DeployArgs) -> Any:
        from opsagent.tools.registry import ToolRegistry
        from opsagent.tools.sources import load_sources

        registries = []
        if args.sandbox:
            from opsagent.tools.platform.launcher import Platform

            self._platform = Platform(Path(tempfile.mkdtemp(prefix="opsagent-sandbox-")), background=25)
            self._platform.__enter__()
            registries.append(self._platform.registry())
        if args.systems:
            registries.append(ToolRegistry.from_services(args.systems))
        if args.tool_sources:
            sources = [s for path in args.tool_sources for s in load_sources(path)]
            registries.append(ToolRegistry.from_sources(sources))
        registry = registries[0]
        for more in registries[1:]:
            registry = registry.merge(more)
        return registry

    def actors(self) -> dict[str, Any]:
        return {"cases": self._system.handles["cases"], "policy": self._system.handles["policy"]}

    def __del__(self) -> None:
        """Publish the traces and release the engine; the actors end with this replica."""
        import ray

        handles = getattr(getattr(self, "_system", None), "handles", {})
        for name in ("tracer", "planner"):
            try:
                ray.get(handles[name].close.remote(), timeout=30)
            except Exception:  # already gone: the trace writer's log is recovered on restart
                pass
        if self._platform is not None:
            self._platform.__exit__(None, None, None)

    def check_health(self) -> None:
        """Serve restarts this replica (and so the actors) if the case manager stops answering."""
        import ray

        ray.get(self._system.handles["cases"].open_cases.remote(), timeout=20)


def app(args: dict[str, Any] | None = None) -> Application:
    """Serve's application builder: `import_path: opsagent.cluster.deploy:app`."""
    try:
        parsed = DeployArgs.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError.invalid("opsagent deployment arguments", exc) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"opsagent deployment arguments: {exc}") from exc
    config = parsed.system_config()
    try:
        api = ApiArgs.model_validate({
            "tokens_path": str(config.state_dir / "tokens.json"),
            "traces_dir": str(config.traces_dir),
            "access_log": str(config.state_dir / "access.jsonl"),
            "rate_limit_path": str(config.state_dir / "rate_limit.sqlite"),
            **parsed.api})
    except ValidationError as exc:
        raise ConfigError.invalid("opsagent deployment arguments", exc, section="api") from exc
    return build_app(api, system=SystemHost.bind(parsed.model_dump()))
