"""The whole system as one Serve application, for `serve run` / `serve deploy` and KubeRay.

Two entry points, after Ray Serve LLM's `build_*(args) -> Application`:

- `build` is the application builder named by cluster/serve_config.yaml and the RayService
  manifest (`import_path: opsagent.cluster.deploy:build` with `args`): it validates the
  arguments (`DeployArgs`) and the system config first, so a typo fails the deploy naming it;
- `app` is the same application already built, configured from the environment in its replicas
  ($OPSAGENT_CONFIG, $OPSAGENT_TOOL_SOURCES, $OPSAGENT_SYSTEMS, $OPSAGENT_SANDBOX, $OPSAGENT_API):
  what `serve build opsagent.cluster.deploy:app` and an `import_path` without `args` take.

Both bind two deployments:

- `opsagent-system` starts the actors (planner, policy, executors, trace writer, case manager)
  from a `SystemConfig`, placed by their actor options (e.g. the planner on a GPU worker, the
  executors on CPU workers), and keeps them: they live as long as its one replica;
- `opsagent-api` is the front door (/v1 and /console) over those actors.

The system's state database (cases, tokens, approvals, modes, ledger: `state:`, PostgreSQL on a
cluster) and trace store must be reachable from every node that runs these replicas.
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
SANDBOX_ENV = "OPSAGENT_SANDBOX"
API_ENV = "OPSAGENT_API"

CLOSE_TIMEOUT_S = 30.0
"""How long the system replica waits for each of the trace writer and the planner to close."""
SHUTDOWN_S = 2 * CLOSE_TIMEOUT_S
"""The system's own shutdown at most: publish the traces, then release the engine."""
GRACEFUL_SHUTDOWN_S = SHUTDOWN_S + 30
"""Serve's graceful_shutdown_timeout_s of the system replica: its shutdown and a margin (Serve's
default, 20 s, would kill the replica half-way)."""


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
        default_factory=lambda: os.environ.get(SANDBOX_ENV, "").lower() in ("1", "true", "yes"),
        description=f"Start the sandbox systems of record inside the system replica and use them "
        f"(a local demo; never in production; default: ${SANDBOX_ENV} is 1 or true).")
    api: dict[str, Any] = Field(
        default_factory=lambda: json.loads(os.environ.get(API_ENV) or "{}"),
        description=f"ApiArgs fields for the front door (limits, access_log, max_queued_requests); "
        f"the actors, tokens and traces come from the system config (default: ${API_ENV}, JSON).")

    @model_validator(mode="after")
    def _some_tools(self) -> "DeployArgs":
        if not (self.tool_sources or self.systems or self.sandbox):
            raise ValueError(f"no systems of record: give tool_sources (or ${SOURCES_ENV}), "
                             f"systems (or ${SYSTEMS_ENV}), or sandbox: true")
        return self

    def system_config(self) -> SystemConfig:
        return SystemConfig.from_yaml(self.config_path) if self.config_path else SystemConfig()


@serve.deployment(name="opsagent-system", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  health_check_period_s=30, graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S)
class SystemHost:
    """Starts the system's actors and owns them; `actors()` hands the API what it fronts.
    `args` None: the `DeployArgs` come from the environment of this replica."""

    def __init__(self, args: dict[str, Any] | None) -> None:
        from opsagent.cluster.system import OpsAgentSystem

        parsed = _parse(args)
        self._platform = None
        config = parsed.system_config()
        self._api = api_args(parsed, config)
        registry = self._registry(parsed)
        self._system = OpsAgentSystem(config, registry).start()

    def _registry(self, args: DeployArgs) -> Any:
        from opsagent.tools.building import build_registry
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
            registries.append(build_registry(sources))
        registry = registries[0]
        for more in registries[1:]:
            registry = registry.merge(more)
        return registry

    def actors(self) -> dict[str, Any]:
        """The actors the API fronts, and its arguments (`ApiArgs` fields) under `api`."""
        return {"cases": self._system.handles["cases"], "policy": self._system.handles["policy"],
                "api": self._api.model_dump(mode="json")}

    def __del__(self) -> None:
        """Publish the traces and release the engine; the actors end with this replica."""
        import ray

        handles = getattr(getattr(self, "_system", None), "handles", {})
        for name in ("tracer", "planner"):
            try:
                ray.get(handles[name].close.remote(), timeout=CLOSE_TIMEOUT_S)
            except Exception:  # already gone: the trace writer's log is recovered on restart
                pass
        if self._platform is not None:
            self._platform.__exit__(None, None, None)

    def check_health(self) -> None:
        """Serve restarts this replica (and so the actors) if the case manager stops answering."""
        import ray

        ray.get(self._system.handles["cases"].open_cases.remote(), timeout=20)


def build(args: dict[str, Any] | None = None) -> Application:
    """Serve's application builder: `import_path: opsagent.cluster.deploy:build` with `args`.
    Refuses bad arguments (ConfigError naming the key) before anything is deployed."""
    parsed = _parse(args or {})
    api = api_args(parsed, parsed.system_config())
    return build_app(api, system=SystemHost.bind(parsed.model_dump()))


def api_args(parsed: DeployArgs, config: SystemConfig) -> ApiArgs:
    """The front door's arguments: its files from the system config, then `parsed.api` over them."""
    try:
        return ApiArgs.model_validate({
            "tokens_path": config.state_url(),
            "traces_dir": str(config.traces_dir),
            "access_log": str(config.state_dir / "access.jsonl"),
            "rate_limit_path": str(config.state_dir / "rate_limit.sqlite"),
            **parsed.api})
    except ValidationError as exc:
        raise ConfigError.invalid("opsagent deployment arguments", exc, section="api") from exc


def _parse(args: dict[str, Any] | None) -> DeployArgs:
    """`args` as DeployArgs; None: every field from the environment."""
    try:
        return DeployArgs.model_validate(args or {})
    except ValidationError as exc:
        raise ConfigError.invalid("opsagent deployment arguments", exc) from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"opsagent deployment arguments: ${SYSTEMS_ENV} or ${API_ENV} is not JSON: "
                          f"{exc}") from exc


app: Application = build_app(None, system=SystemHost.bind(None))
"""The application configured from the environment of its replicas (module docstring)."""
