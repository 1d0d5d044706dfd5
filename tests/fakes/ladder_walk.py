"""Walk a class up the autonomy ladder as a deployment would, with a simulated ops team.

The case path is the product's own (planner, policy engine and approvals, executor, trace
records, Parquet trace store), run in-process instead of in Ray actors; the ladder is the
product's own API (`AutonomyStore`, `evals.verdicts`: human-log comparison, gate status,
`gate_mode_change`). The simulated people: ops' action log for the shadow comparison (the
client's history, errors included), an approver who grants a held write exactly when it is the
gold's write, and an admin who promotes only when the gates allow it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from opsagent.agents.case import Case, CaseStatus, ExceptionReport
from opsagent.agents.engines.base import PlannerEngine
from opsagent.agents.engines.scripted import ScriptedEngine
from opsagent.agents.executor import Executor
from opsagent.agents.local import LocalPolicy, LocalTracer
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import Playbook
from opsagent.agents.runner import CaseRunner
from opsagent.agents.tracing.evidence import case_verdicts
from opsagent.agents.tracing.exporters import InMemoryExporter
from opsagent.agents.tracing.parquet import ParquetExporter
from opsagent.cluster.config import PlannerConfig
from tests.fakes.planners import gold_calls
from opsagent.evals.catalogue import Instance
from opsagent.evals.evalset import write_eval_set
from opsagent.evals.gold import scripted_gold
from opsagent.evals.verdicts import Write, compare_human_log, record_verdicts
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.autonomy import AutonomyStore
from opsagent.policy.config import PolicyConfig
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.gates import class_statuses, gate_mode_change
from opsagent.policy.identity import Identity, Role
from opsagent.policy.modes import Mode
from opsagent.policy.service import PolicyService
from opsagent.policy.stats import wilson
from opsagent.tools.registry import ToolRegistry

APPROVER = Identity(name="jana.approver", roles=frozenset({Role.approver}))
ADMIN = Identity(name="ops.admin", roles=frozenset({Role.admin}))


@dataclass
class Stage:
    """One stage's run: the cases, their verdicts (the gates' evidence) and approvals asked."""

    mode: str
    cases: int
    verdicts: int = 0
    correct: int = 0
    approvals: int = 0
    unsupervised_writes: int = 0
    unsupervised_right: int = 0
    end_state_right: int = 0
    eligible: bool = False
    why: str = ""
    promoted_to: str | None = None
    low: float = 0.0
    high: float = 0.0

    def line(self) -> str:
        text = (f"{self.mode}: {self.cases} cases, {self.correct}/{self.verdicts} verdicts correct "
                f"(Wilson 95% {self.low:.3f}-{self.high:.3f}), {self.approvals} approvals asked")
        if self.mode == "autonomous":
            text += (f", {self.unsupervised_right}/{self.unsupervised_writes} writes without a human right, "
                     f"{self.end_state_right}/{self.cases} end states right")
        return text + (f"; promoted to {self.promoted_to}" if self.promoted_to else f"; {self.why}")


@dataclass
class Ladder:
    """The product's pieces for one class, on a state and a trace folder of their own."""

    registry: ToolRegistry
    policy: PolicyConfig
    playbook: Playbook
    root: Path
    state_of: Callable[[Instance], str | None] = lambda inst: None
    stages: list[Stage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.traces = self.root / "traces"
        self.store = AutonomyStore(self.root / "state" / "autonomy.sqlite")
        self.engine = PolicyEngine(self.policy, self.registry, autonomy=self.store)
        self.service = PolicyService(self.engine, ApprovalStore(self.root / "state" / "approvals.sqlite"))
        self.executor = Executor(self.registry, self.engine.verifier)
        self.name = self.playbook.exception_type

    def mode(self) -> Mode:
        return self.store.mode(self.name, self.policy.classes[self.name].initial_mode)

    async def run(self, instances: list[Instance], engine_for: Callable[[Instance], PlannerEngine] | None = None,
                  playbook: Playbook | None = None) -> list[Case]:
        """Run the cases in the class's current mode; held writes are decided by the simulated
        approver; the trace records go to the store in one Parquet batch."""
        book = playbook or self.playbook.model_copy(update={"examples": []})
        out, exporter = [], InMemoryExporter()
        for inst in instances:
            options = PlannerConfig().planner_options()
            engine = (engine_for(inst) if engine_for else ScriptedEngine(
                [scripted_gold(inst, book)] * await gold_calls(
                    inst, book, self.registry, self.service.allowed_tools(self.name), **options)))
            planner = Planner(engine, {self.name: book}, self.registry, **options)
            runner = CaseRunner(planner, LocalPolicy(self.service), self.executor, LocalTracer(exporter),
                                self.registry, max_steps=book.max_steps)
            case = await runner.run(Case(report=ExceptionReport(
                exception_type=inst.exception_type, description=inst.description, entities=inst.entities)))
            while case.status == CaseStatus.awaiting_approval:
                held = self.service.get_approval(case.steps[-1].approval_id)
                right = _gold_write(inst, held.tool, held.args)
                self.service.decide_approval(held.approval_id, identity=APPROVER, approve=right,
                                             args_digest=held.args_digest,
                                             reason="matches the audit" if right else "not what the audit says")
                case = await runner.resume(case)
            out.append(case)
        with ParquetExporter(self.traces) as parquet:
            parquet.export(exporter.events)
        return out

    def stage(self, instances: list[Instance], cases: list[Case], folder: Path) -> Stage:
        """Judge a stage: in shadow, compare with ops' log (recorded as verdicts); then read the
        gate status and, if eligible, promote one stage as the admin."""
        mode = self.mode()
        result = Stage(mode=mode.value, cases=len(cases))
        result.approvals = sum(1 for c in cases for s in c.steps if s.approval_id)
        if mode == Mode.shadow:
            write_eval_set(instances, folder, seed=instances[0].seed)
            report = compare_human_log(self.traces, folder / "human_log.jsonl")
            record_verdicts(self.traces, report.verdicts, self.store, self.policy)
        if mode == Mode.autonomous:
            for inst, case in zip(instances, cases, strict=True):
                for step in case.steps:
                    if self.registry.get(step.tool).writes and step.executed and not step.approval_id:
                        result.unsupervised_writes += 1
                        result.unsupervised_right += _gold_write(inst, step.tool, step.args)
                result.end_state_right += self.state_of(inst) == _expected(inst)
        status = next(s for s in class_statuses(case_verdicts(self.traces), self.store, self.policy) if s.exception_type == self.name)
        result.verdicts, result.correct = status.evidence.n, status.evidence.correct
        result.low, result.high = wilson(status.evidence.correct, status.evidence.n, 0.95)
        result.eligible, result.why = status.eligible, status.why
        if status.eligible and status.next_mode is not None:
            reason = gate_mode_change(self.name, status.mode, status.next_mode, status=status,
                                      reason=f"gates: {status.evidence.correct}/{status.evidence.n} in {mode}")
            self.store.set_mode(self.name, status.next_mode, identity=ADMIN, reason=reason, expected=status.mode)
            result.promoted_to = status.next_mode.value
        self.stages.append(result)
        return result

    async def close(self) -> None:
        await self.executor.close()


def _gold_write(inst: Instance, tool: str, args: dict) -> bool:
    """The write is one of the gold's (same tool, same arguments but free text)."""
    return any(Write.of(tool, args).matches(Write.of(a.tool, a.args)) for a in inst.gold.actions if a.writes)


def _expected(inst: Instance) -> str | None:
    values = inst.gold.assertions[0].values
    return values.get("status")
