"""Configuration of an opsagent deployment, loadable from YAML; every field is described."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from opsagent.agents.engines import OpenAIEngineConfig, VllmEngineConfig
from opsagent.errors import ConfigError


class PlannerConfig(BaseModel):
    """Which engine the planner actor hosts and where it is placed."""

    model_config = {"extra": "forbid"}
    engine: Literal["vllm", "openai"] = Field(
        default="vllm", description="vllm: in-process async engine; openai: a remote server."
    )
    vllm: VllmEngineConfig = Field(default_factory=VllmEngineConfig, description="vLLM settings.")
    openai: OpenAIEngineConfig | None = Field(default=None, description="Remote server settings.")
    max_tokens: int = Field(default=160, gt=0, description="Output budget of one planner step.")
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
    replicas: int = Field(
        default=1, ge=1, le=64,
        description="Planner actors (one per GPU node in production); each planning call goes "
        "to the replica with the fewest calls in flight.",
    )


class SystemConfig(BaseModel):
    """One opsagent system: planner, executor pool, policy, trace store, case manager."""

    model_config = {"extra": "forbid"}
    planner: PlannerConfig = Field(default_factory=PlannerConfig, description="The planner.")
    executors: int = Field(default=2, ge=1, le=64, description="Executor actors in the pool.")
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
    max_actor_restarts: int = Field(
        default=-1, ge=-1,
        description="Times Ray restarts a dead actor (-1: without limit). A restarted case "
        "manager resumes the open cases from state_dir/cases.sqlite.",
    )
    executor_timeout_s: float = Field(default=10.0, gt=0, description="Per tool call timeout.")
    policy_path: Path | None = Field(
        default=None, description="Policy YAML; None means the default policy shipped in policy/."
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
        description="Durable state: cases.sqlite (every case and submission key), approvals.sqlite, "
        "ledger.sqlite (spend and rate counters), tokens.json (API tokens, hashed).",
    )
    approval_ttl_s: float = Field(
        default=86400.0, gt=0, description="Seconds a held action waits for a decision before expiring."
    )
    max_steps: int = Field(default=6, ge=1, le=50, description="Planner steps before escalation.")
    max_open_cases: int = Field(
        default=1000, ge=1, description="Cases in flight before submissions are refused (503)."
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

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SystemConfig":
        try:
            return cls.model_validate(yaml.safe_load(Path(path).read_text()) or {})
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise ConfigError(f"config {path}: {exc}") from exc
