"""A case runner wired in-process to the real platform and policy, with a scripted engine."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest

from opsagent.agents.case import Case, ExceptionReport
from opsagent.agents.engines.scripted import ScriptedEngine, ScriptStep
from opsagent.agents.executor import Executor
from opsagent.agents.local import LocalPolicy, LocalTracer
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.runner import CaseRunner
from opsagent.agents.tracing.exporters import InMemoryExporter
from opsagent.policy.config import PolicyConfig, load_default_policy
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.service import PolicyService
from opsagent.tools.platform import InjectedException, Platform, inject_weight_mismatch
from opsagent.tools.registry import ToolRegistry
from tests.fakes.autonomy import promoted

_SEEDS = itertools.count(50_000)


@pytest.fixture
def instance(platform: Platform) -> Callable[..., InjectedException]:
    """`instance(scale_ok=True)`: a freshly planted weight mismatch no other test touches."""

    def make(scale_ok: bool = True) -> InjectedException:
        share = 0.0 if scale_ok else 1.0
        return inject_weight_mismatch(platform, count=1, seed=next(_SEEDS), suspect_share=share)[0]

    return make


class Harness:
    """Runs one case through the real policy and executor; the engine follows `script`."""

    def __init__(self, registry: ToolRegistry, script: list[ScriptStep], max_steps: int = 6,
                 planner: Any = None, mode: str = "autonomous", policy: PolicyConfig | None = None,
                 token_logprob: float | None = None, decoding: str = "choice"):
        self.engine = ScriptedEngine(script, token_logprob=token_logprob)
        self.traces = InMemoryExporter()
        config = policy or load_default_policy()  # every class ships in shadow: promoted as an admin would
        self.autonomy = promoted(config, mode)
        self.policy = PolicyEngine(config, registry, autonomy=self.autonomy)
        self.service = PolicyService(self.policy, ApprovalStore(":memory:"))
        self.runner = CaseRunner(
            planner or Planner(self.engine, builtin_playbooks(), registry, decoding=decoding),
            LocalPolicy(self.service),
            Executor(registry, self.policy.permit_key), LocalTracer(self.traces), registry,
            max_steps=max_steps,
        )

    def run(self, inst: InjectedException) -> Case:
        report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                 entities=inst.entities)
        return asyncio.run(self.runner.run(Case(report=report)))

    def resume(self, case: Case) -> Case:
        return asyncio.run(self.runner.resume(case))


@pytest.fixture
def harness(registry: ToolRegistry) -> Callable[..., Harness]:
    """`harness(script, registry=..., max_steps=..., planner=..., mode=...)`; the session's registry
    by default; `planner` replaces the scripted engine's planner (e.g. a RawPlanner); `mode` is every
    class's autonomy mode (default autonomous); `decoding` the planner's (default choice)."""
    return lambda script, registry=registry, **kw: Harness(registry, script, **kw)
