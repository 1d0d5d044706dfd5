"""Real traced cases for the read side: two cases run in-process and written to a Parquet root.

`trace_two_cases` runs, through the real policy, executor and trace writer, with a scripted
engine that follows the gold: a weight mismatch that resolves (reads, then the dispute) and one
whose planner proposes a high-risk rebill, which alice approves, after which it escalates.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from pydantic import BaseModel

from opsagent.agents.case import Case, CaseStatus, ExceptionReport
from opsagent.agents.engines.scripted import ScriptedEngine
from opsagent.agents.executor import Executor
from opsagent.agents.local import LocalPolicy, LocalTracer
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.runner import CaseRunner
from opsagent.agents.tracing.writer import TraceWriter
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.config import PolicyConfig, load_default_policy
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.identity import Identity, Role
from opsagent.policy.service import PolicyService
from opsagent.tools.platform import Platform, inject_weight_mismatch
from opsagent.tools.registry import ToolRegistry
from tests.fakes.autonomy import promoted
from tests.fakes.planners import gold_except

_SEEDS = itertools.count(70_000)
ALICE = Identity(name="alice", roles=frozenset({Role.approver}))


class TracedCases(BaseModel, arbitrary_types_allowed=True):
    root: Path
    resolved: Case
    approved: Case
    policy: PolicyConfig


def trace_two_cases(platform: Platform, registry: ToolRegistry, root: Path,
                    policy: PolicyConfig | None = None) -> TracedCases:
    """Run both cases and publish their traces under `root`."""
    policy = policy or load_default_policy()
    first, second = (inject_weight_mismatch(platform, count=1, seed=next(_SEEDS), suspect_share=0.0)[0]
                     for _ in range(2))
    # model calls: the first case's 2 reads and dispute (its finish is the playbook's rule), the
    # second's 2 reads and rebill, then its finish after the approval
    engine = ScriptedEngine([gold_except({second.entities["shipment_id"]})] * 7)
    engine_policy = PolicyEngine(policy, registry, autonomy=promoted(policy))  # shipped in shadow
    service = PolicyService(engine_policy, ApprovalStore(":memory:"))
    writer = TraceWriter(root)
    runner = CaseRunner(Planner(engine, builtin_playbooks(), registry), LocalPolicy(service),
                        Executor(registry, engine_policy.verifier), LocalTracer(writer), registry)

    def run(inst) -> Case:
        report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                 entities=inst.entities)
        return asyncio.run(runner.run(Case(report=report)))

    try:
        resolved = run(first)
        held = run(second)
        assert held.status == CaseStatus.awaiting_approval, held.reason
        approval = service.get_approval(held.steps[-1].approval_id)
        service.decide_approval(approval.approval_id, identity=ALICE, approve=True,
                                args_digest=approval.args_digest, reason="scale agrees")
        approved = asyncio.run(runner.resume(held))
    finally:
        writer.close()
    assert resolved.status == CaseStatus.resolved, resolved.reason
    assert approved.status == CaseStatus.escalated, approved.reason
    engine.assert_done()
    return TracedCases(root=root, resolved=resolved, approved=approved, policy=policy)
