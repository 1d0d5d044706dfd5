"""Configuration of an opsagent deployment, loadable from YAML; every field is described."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from opsagent.agents.engines import OpenAIEngineConfig, VllmEngineConfig
from opsagent.agents.engines.base import ChoiceMethod
from opsagent.agents.planner import Decoding
from opsagent.agents.tracing.otlp import OtlpConfig
from opsagent.cluster.webhooks import WebhookConfig
from opsagent.errors import ConfigError
from opsagent.policy.state import redact, state_db


class FewShotConfig(BaseModel):
    """Worked examples retrieved from human-approved traces of each class (agents/approved_examples.py),
    appended to the playbook's own when the system starts."""

    model_config = {"extra": "forbid"}
    traces: Path | str | None = Field(
        default=None, description="Trace store to retrieve from (a folder or S3 URI); None: the "
        "system's own traces_dir, so a deployment learns from what its approvers granted.")
    per_class: int = Field(default=2, ge=1, le=8, description="Examples retrieved per class at most.")
    placement: Literal["first", "last"] = Field(
        default="last", description="Where the retrieved examples go: before the playbook's own "
        "(first) or after them, next to the case (last).")


class PlannerConfig(BaseModel):
    """Which engine the planner actor hosts, how it is asked, and where it is placed."""

    model_config = {"extra": "forbid"}
    engine: Literal["vllm", "openai"] = Field(
        default="vllm", description="vllm: in-process async engine; openai: a remote server."
    )
    vllm: VllmEngineConfig = Field(default_factory=VllmEngineConfig, description="vLLM settings.")
    openai: OpenAIEngineConfig | None = Field(default=None, description="Remote server settings.")
    max_tokens: int = Field(default=160, gt=0, description="Output budget of one planner step.")
    decoding: Decoding = Field(
        default="choice",
        description="choice: the model picks among candidate steps built in code, only free "
        "arguments are generated (agents/planner.py); schema: the model writes the whole step as "
        "grammar-constrained JSON (the pre-2026-12 planner, kept as the benchmarks' baseline and "
        "used with engines that cannot score options).")
    choice_method: ChoiceMethod = Field(
        default="branch",
        description="How the engine scores candidates: branch (next-token probabilities where "
        "the candidates part) or score (each candidate's whole log-likelihood; slower, see "
        "docs/benchmarks.md).")
    warm_classes: list[str] | None = Field(
        default=None,
        description="Classes whose shared prompt prefix is computed at start-up (None: every "
        "class with a playbook). Each costs a prefill and KV-cache space; list the busy ones.",
    )
    actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0},
        description="Ray actor options of each replica, e.g. {num_gpus: 1} on a GPU node, or "
        "{resources: {planner: 1}} where the nodes meant for planning offer that resource.",
    )
    few_shot: FewShotConfig | None = Field(
        default=None, description="Retrieve worked examples from human-approved traces (None: the "
        "playbooks' own examples only).")
    replicas: int = Field(
        default=1, ge=1, le=64,
        description="Planner actors (one per GPU node in production); each planning call goes "
        "to the replica with the fewest calls in flight.",
    )

    def planner_options(self) -> dict[str, Any]:
        """The `Planner`'s keyword arguments."""
        return {"max_tokens": self.max_tokens, "decoding": self.decoding,
                "choice_method": self.choice_method}


class ExecutorAutoscalingConfig(BaseModel):
    """Sizes the executor pool with its load (names after Ray Serve's autoscaling_config)."""

    model_config = {"extra": "forbid"}
    min_executors: int = Field(
        default=1, ge=1, le=64,
        description="Executors the system starts and never goes below; they are never removed.")
    max_executors: int = Field(default=8, ge=1, le=64, description="Executors the pool never exceeds.")
    target_in_flight: float = Field(
        default=2.0, gt=0,
        description="Tool calls in flight per executor the pool aims at: it grows when the "
        "average over upscale_delay_s exceeds this times its size.")
    upscale_delay_s: float = Field(
        default=5.0, ge=0, description="Seconds of load the average is taken over before growing.")
    downscale_delay_s: float = Field(
        default=60.0, ge=0,
        description="Seconds the load must have fitted in fewer executors before idle ones are removed.")
    interval_s: float = Field(default=1.0, gt=0, description="Seconds between two scaling decisions.")

    @model_validator(mode="after")
    def _min_within_max(self) -> "ExecutorAutoscalingConfig":
        if self.min_executors > self.max_executors:
            raise ValueError(f"executor_autoscaling: min_executors ({self.min_executors}) is above "
                             f"max_executors ({self.max_executors})")
        return self


class SystemConfig(BaseModel):
    """One opsagent system: planner, executor pool, policy, trace store, case manager."""

    model_config = {"extra": "forbid"}
    planner: PlannerConfig = Field(default_factory=PlannerConfig, description="The planner.")
    executors: int = Field(
        default=2, ge=1, le=64,
        description="Executor actors in the pool, a fixed size (unused with executor_autoscaling).")
    executor_autoscaling: ExecutorAutoscalingConfig | None = Field(
        default=None,
        description="Grow and shrink the executor pool with its load, between min_executors and "
        "max_executors; None: a fixed pool of `executors`.")
    executor_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0},
        description="Ray actor options of each executor, e.g. {num_cpus: 0.25, resources: "
        "{executor_slots: 1}} to keep them on the CPU workers that offer that resource.",
    )
    control_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0},
        description="Ray actor options of the policy, trace writer and case manager, e.g. "
        "{resources: {control: 0.01}} to keep them on the node that holds state_dir.",
    )
    policy_actor_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray actor options of the policy actor over control_actor_options, e.g. "
        "{resources: {policy: 1}} to place it on the one pod that mounts the permit signing key.",
    )
    max_actor_restarts: int = Field(
        default=-1, ge=-1,
        description="Times Ray restarts a dead actor (-1: without limit). A restarted case "
        "manager resumes the open cases from the state database.",
    )
    executor_timeout_s: float = Field(default=10.0, gt=0, description="Per tool call timeout.")
    policy_path: Path | None = Field(
        default=None, description="Policy YAML; None means the default policy shipped in policy/."
    )
    playbooks_dir: Path | None = Field(
        default=None, description="Folder of <class>.yaml playbooks (each with its <class>.examples.json, "
        "if any) added to the shipped ones; one for a shipped class replaces it. How a client adds an "
        "exception class without code (docs/new-exception-class.md).",
    )
    traces_dir: Path | str = Field(
        default=Path("traces"),
        description="Root of the Parquet trace store: a folder, or an S3 URI such as "
        "s3://bucket/traces?endpoint_override=host:9000&scheme=http shared by every node (credentials "
        "from the AWS environment variables; then trace_wal_dir is required).",
    )
    trace_wal_dir: Path | None = Field(
        default=None,
        description="Local folder of the trace writer's write-ahead log (and its compaction intents); "
        "None: <traces_dir>/_wal. Required when traces_dir is an S3 URI.",
    )
    state_dir: Path = Field(
        default=Path("state"),
        description="Node-local state folder: the permit signing key (one machine), the access log, the "
        "front door's rate counters, and by default the state database (state_dir/state.sqlite).",
    )
    state: str | None = Field(
        default=None,
        description="The state database of every durable decision (cases and submission keys, approvals, "
        "the spending ledger, autonomy modes, permit nonces, API tokens): sqlite:///path for one machine "
        "(None: sqlite:///<state_dir>/state.sqlite), postgresql://user@host/db for a cluster, or env:NAME "
        "to read the URL from that environment variable (e.g. a Kubernetes secret).",
    )
    approval_ttl_s: float = Field(
        default=86400.0, gt=0, description="Seconds a held action waits for a decision before expiring."
    )
    gate_check_interval_s: float | None = Field(
        default=60.0, ge=0,
        description="Seconds between the policy actor's autonomy gate checks, which demote a class "
        "whose live accuracy fell below its gate (policy/gates.py; one more check follows each approval "
        "decision); None or 0: no automatic demotion (`opsagent autonomy check` still runs it).",
    )
    approval_webhook: WebhookConfig | None = Field(
        default=None, description="POST signed notifications of approvals requested, about to expire, "
        "decided and expired to a webhook (README, Operating); None: no notifications.")
    approval_check_interval_s: float = Field(
        default=15.0, gt=0, description="Seconds between two looks at the pending approvals (the "
        "approvals metrics, expiring and expired notifications).")
    engine_metrics: bool = Field(
        default=True, description="A vLLM planner engine exports vLLM's own metrics through Ray "
        "(its RayPrometheusStatLogger) beside opsagent's.")
    otlp: OtlpConfig | None = Field(
        default=None, description="Also send the trace as OpenTelemetry spans over OTLP/HTTP "
        "(case > step > plan, policy decision, tool call); None: Parquet only.")
    max_steps: int = Field(default=6, ge=1, le=50, description="Planner steps before escalation.")
    max_open_cases: int = Field(
        default=1000, ge=1, description="Cases in flight before submissions are refused (503)."
    )
    case_cache: int = Field(
        default=1000, ge=0,
        description="Finished cases the case manager keeps in memory besides the open ones (the "
        "most recent); older ones are read back from the state database, so its memory does "
        "not grow with the number of cases.",
    )
    state_wait_s: float = Field(
        default=3600.0, gt=0,
        description="How long a case waits for a state database that is away (retrying with "
        "backoff) before it is parked at its last checkpoint; the case manager resumes a parked "
        "case by itself once the database answers again.",
    )

    @field_validator("traces_dir")
    @classmethod
    def _folder_or_uri(cls, value: Path | str) -> Path | str:
        return value if isinstance(value, str) and "://" in value else Path(value)

    @model_validator(mode="after")
    def _remote_traces_need_a_local_log(self) -> "SystemConfig":
        if isinstance(self.traces_dir, str) and self.trace_wal_dir is None:
            raise ValueError("traces_dir is an object store URI: set trace_wal_dir to a local folder")
        return self

    @field_validator("state")
    @classmethod
    def _a_state_url(cls, value: str | None) -> str | None:
        if value is None or value.startswith("env:"):
            return value
        if not value.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise ValueError(f"state must be sqlite:///path, postgresql://... or env:NAME, not {redact(value)!r}")
        return value

    def state_url(self) -> str:
        """The state database: its URL, or `env:NAME` (resolved by each process that opens it)."""
        return state_db(self.state_dir) if self.state is None else self.state

    @property
    def initial_executors(self) -> int:
        """Executors the system starts: `executors`, or min_executors when autoscaled."""
        scaling = self.executor_autoscaling
        return scaling.min_executors if scaling is not None else self.executors

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SystemConfig":
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config {path}: {exc}") from exc
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError.invalid(f"config {path}", exc) from exc
