"""Starts and stops one opsagent system on Ray: actors, then the Serve front door."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import ray
from ray import serve

from opsagent.agents.approved_examples import RetrievedExamples, with_approved_examples
from opsagent.agents.engines import OpenAIEngine, PlannerEngine, VllmEngine
from opsagent.agents.playbooks import Playbook
from opsagent.agents.playbooks.model import playbooks_with
from opsagent.cluster.actors import PlannerActor, PolicyActor, TraceWriterActor
from opsagent.cluster.adapters import ExecutorFactory
from opsagent.cluster.api.request_limits import ApiLimits
from opsagent.cluster.case_records import CaseLease
from opsagent.cluster.cases import CaseManager
from opsagent.cluster.config import SystemConfig
from opsagent.cluster.runtime import NAMESPACE
from opsagent.cluster.serve_app import ApiArgs, build_app
from opsagent.errors import ConfigError
from opsagent.policy.config import PolicyConfig, load_default_policy
from opsagent.policy.state import open_state
from opsagent.tools.registry import ToolRegistry

log = logging.getLogger(__name__)

CASE_MANAGER = "opsagent-cases"
POLICY = "opsagent-policy"


def make_engine(config: SystemConfig) -> PlannerEngine:
    if config.planner.engine == "openai":
        if config.planner.openai is None:
            raise ConfigError("planner.engine is 'openai' but planner.openai is not set")
        return OpenAIEngine(config.planner.openai)
    return VllmEngine(config.planner.vllm)


class OpsAgentSystem:
    """The actors of one deployment. Ray must already be initialised (`start_ray`)."""

    def __init__(self, config: SystemConfig, registry: ToolRegistry, *,
                 engine: PlannerEngine | None = None,
                 playbooks: dict[str, Playbook] | None = None,
                 policy: PolicyConfig | None = None) -> None:
        self.config = config
        self.registry = registry
        self.engine = engine or make_engine(config)
        self.playbooks = playbooks if playbooks is not None else playbooks_with(config.playbooks_dir)
        self.retrieved: list[RetrievedExamples] = []
        if config.planner.few_shot is not None:
            few = config.planner.few_shot
            source = few.traces if few.traces is not None else config.traces_dir
            self.playbooks, self.retrieved = with_approved_examples(
                self.playbooks, source if isinstance(source, str) else source.resolve(), few.per_class,
                few.placement)
        if policy is None:
            policy = (PolicyConfig.from_yaml(config.policy_path) if config.policy_path
                      else load_default_policy())
        self.policy = policy
        self.handles: dict[str, Any] = {}
        self.model: str | None = None
        self.startup: dict[str, float] = {}
        # the case manager's lease owner: its restarts re-take their lease at once, another system
        # on the same state database waits for it to lapse (see CaseStore.hold)
        self.system_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:12]}"

    def start(self, say: Callable[[str], None] | None = None) -> "OpsAgentSystem":
        """Create the actors and wait until the planner replicas' engines are loaded and the
        classes' prompt prefixes computed; `say` hears what start-up is doing (default: the log).
        `self.startup` keeps how long the engine and the warm-up took."""
        say = say or log.info
        c = self.config
        database = self.tokens_path  # the state database: reached (and migrated) before any actor starts
        open_state(database)
        restarts = {"max_restarts": c.max_actor_restarts}
        secret = c.approval_webhook.resolve_secret() if c.approval_webhook is not None else None
        planners = [PlannerActor.options(name=_planner_name(i), **restarts, **c.planner.actor_options).remote(
            self.engine, self.playbooks, self.registry, c.planner.planner_options(), c.engine_metrics)
            for i in range(c.planner.replicas)]
        c.state_dir.mkdir(parents=True, exist_ok=True)
        state = str(c.state_dir.resolve())
        control = {**restarts, **c.control_actor_options}
        traces = c.traces_dir if isinstance(c.traces_dir, str) else str(c.traces_dir.resolve())
        # The policy loads (or on one machine creates) its private signing key in its own process;
        # every other component gets the public key only.
        policy = PolicyActor.options(name=POLICY, **{**control, **c.policy_actor_options}).remote(
            self.policy, self.registry, state, None, c.approval_ttl_s, traces, c.gate_check_interval_s,
            database, state_url=database, webhook=c.approval_webhook, webhook_secret=secret,
            approval_check_interval_s=c.approval_check_interval_s)
        public_keys = ray.get(policy.public_keys.remote())
        # the pool's floor; an autoscaled pool adds (and removes) more through the same factory
        spawn = ExecutorFactory(self.registry, public_keys, c.executor_timeout_s,
                                {**restarts, **c.executor_actor_options},
                                uses_path=database)
        executors = [spawn() for _ in range(c.initial_executors)]
        wal = str(c.trace_wal_dir.resolve()) if c.trace_wal_dir else None
        tracer = TraceWriterActor.options(name="opsagent-traces", **control).remote(traces, wal_dir=wal, otlp=c.otlp)
        cases = CaseManager.options(name=CASE_MANAGER, **control).remote(
            planners, policy, executors, tracer, self.registry, c.max_steps, c.max_open_cases, database,
            executor_factory=spawn, executor_scaling=c.executor_autoscaling, case_cache=c.case_cache,
            lease=CaseLease(owner=self.system_id), state_wait_s=c.state_wait_s)
        self.handles = dict(planner=planners[0], planners=planners, policy=policy,
                            executors=executors, tracer=tracer, cases=cases)
        began = time.monotonic()
        say(f"planner: starting {c.planner.engine} engine on {c.planner.replicas} replica(s) "
            "(the embedded model is converted once and cached)")
        models = ray.get([p.start.remote() for p in planners])
        self.model = models[0]
        loaded = time.monotonic()
        warm = c.planner.warm_classes if c.planner.warm_classes is not None else list(self.playbooks)
        allowed = {k: ray.get(policy.allowed_tools.remote(k)) for k in warm if k in self.playbooks}
        say(f"planner: {self.model} loaded in {loaded - began:.1f} s; warming {len(allowed)} class "
            "prompt prefixes in one batch")
        ray.get([p.warm_up.remote(allowed) for p in planners])
        self.startup = {"engine_s": round(loaded - began, 1), "warm_s": round(time.monotonic() - loaded, 1),
                        "classes": len(allowed)}
        say(f"planner: ready in {time.monotonic() - began:.1f} s ({self.startup['warm_s']} s warming)")
        return self

    def serve(self, host: str = "127.0.0.1", port: int = 8000, limits: ApiLimits | None = None) -> str:
        """Start the Serve front door on `port` (0: a free one; request `limits`: the defaults
        unless given); returns its base URL."""
        port = port or _free_port()
        serve.start(http_options={"host": host, "port": port})
        c = self.config
        args = ApiArgs(case_manager=CASE_MANAGER, policy=POLICY,
                       tokens_path=self.tokens_path,
                       traces_dir=c.traces_dir if isinstance(c.traces_dir, str) else str(c.traces_dir.resolve()),
                       access_log=str((c.state_dir / "access.jsonl").resolve()),
                       rate_limit_path=str((c.state_dir / "rate_limit.sqlite").resolve()),
                       **({"limits": limits} if limits is not None else {}))
        serve.run(build_app(args), name="opsagent",
                  route_prefix="/", blocking=False)
        return f"http://{host}:{port}"

    @property
    def tokens_path(self) -> str:
        """The state database's URL: the API tokens live there, with every other durable record."""
        return self.config.state_url()

    def flush_traces(self) -> None:
        if "tracer" in self.handles:
            ray.get(self.handles["tracer"].flush.remote())

    def stop(self) -> None:
        """Flush traces, stop Serve, release the engine and the actors."""
        if not self.handles:
            return
        try:
            ray.get(self.handles["tracer"].close.remote())  # publishes the log, releases its lock
        finally:
            try:
                ray.get(self.handles["cases"].release_lease.remote(), timeout=30)
            except Exception:  # a case manager already gone: its lease lapses on its own
                pass
            try:
                serve.shutdown()
            except Exception:
                pass
            try:
                ray.get([p.close.remote() for p in self.handles["planners"]], timeout=60)
            except Exception:
                pass
            for handle in [*self.handles["executors"], *self.handles["planners"],
                           *(self.handles[k] for k in ("policy", "tracer", "cases"))]:
                ray.kill(handle, no_restart=True)
            self.handles = {}


def _planner_name(index: int) -> str:
    return "opsagent-planner" if index == 0 else f"opsagent-planner-{index}"


def case_manager() -> Any:
    return ray.get_actor(CASE_MANAGER, namespace=NAMESPACE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
