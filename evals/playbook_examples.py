"""Record a playbook's worked examples: gold resolutions run for real on the sandbox platform.

`python -m opsagent.evals.playbook_examples damage_claim` writes `damage_claim.examples.json`
beside the playbook. The instances come from the exception catalogue with a training seed (see
`evals/evalset.py`: held-out seeds are refused), so the examples never contain an instance being
scored. Each gold runs through the real planner, policy, executor and trace path as a scripted
planner; a high-risk gold step is held for approval like any other, approved (the gold is what a
human approves) and the case resumed, so the example shows the step and its result.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from opsagent.agents.case import Case, CaseStatus, ExceptionReport
from opsagent.agents.engines.scripted import ScriptedEngine
from opsagent.agents.executor import Executor
from opsagent.agents.local import LocalPolicy, LocalTracer
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import PLAYBOOKS_DIR, Example, Playbook, Turn, builtin_playbooks
from opsagent.agents.prompts import observation_message
from opsagent.agents.runner import CaseRunner
from opsagent.agents.tracing.exporters import InMemoryExporter
from opsagent.evals.catalogue import make, plant
from opsagent.evals.evalset import require_training_seed
from opsagent.evals.gold import scripted_gold
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.autonomy import promoted_store
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.identity import Identity, Role
from opsagent.policy.service import PolicyService
from opsagent.tools.platform.launcher import Platform

TRAINING_SEED = 1_000_003
RECORDER = Identity(name="gold-recorder", roles=frozenset({Role.approver, Role.admin}))


async def record(playbook: Playbook, platform: Platform, *, count: int, seed: int,
                 escalate_share: float = 0.5) -> list[Example]:
    """Run the gold resolution of `count` catalogue instances; return them as examples."""
    require_training_seed(seed)
    registry = platform.registry()
    config = load_default_policy()  # its classes start in shadow: promoted for this sandbox run only
    policy = PolicyEngine(config, registry, autonomy=promoted_store(
        [playbook.exception_type], identity=RECORDER, reason="recording gold worked examples on a sandbox"))
    service = PolicyService(policy, ApprovalStore(":memory:"))
    executor = Executor(registry, policy.verifier)
    instances = make(playbook.exception_type, seed=seed, count=count, escalate_share=escalate_share)
    plant(instances, platform)
    examples = []
    bare = playbook.model_copy(update={"examples": []})
    for inst in instances:
        engine = ScriptedEngine([scripted_gold(inst, playbook)] * playbook.max_steps)
        planner = Planner(engine, {playbook.exception_type: bare}, registry)
        runner = CaseRunner(planner, LocalPolicy(service), executor, LocalTracer(InMemoryExporter()),
                            registry, max_steps=playbook.max_steps)
        report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                 entities=inst.entities)
        case = await runner.run(Case(report=report))
        while case.status == CaseStatus.awaiting_approval:
            held = service.get_approval(case.steps[-1].approval_id)
            service.decide_approval(held.approval_id, identity=RECORDER, approve=True,
                                    args_digest=held.args_digest, reason="gold resolution")
            case = await runner.resume(case)
        ran = [s.tool for s in case.steps]
        if case.status.value != inst.gold.outcome or ran != [a.tool for a in inst.gold.actions]:
            raise RuntimeError(f"gold run of {inst.instance_id} ended {case.status.value} after {ran} "
                               f"({case.reason}); expected {inst.gold.outcome}")
        # One turn per model output; the last may be a finish (no observation follows it).
        observations = [observation_message(s, playbook.observe) for s in case.steps]
        observations += [None] * (len(engine.outputs) - len(observations))
        turns = [Turn(output=json.loads(text), observation=obs)
                 for text, obs in zip(engine.outputs, observations, strict=True)]
        examples.append(Example(report=report, turns=turns))
    await executor.close()
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("exception_type")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=TRAINING_SEED, help="a training seed (>= 1,000,000)")
    parser.add_argument("--escalate-share", type=float, default=0.5, help="share of escalating examples")
    args = parser.parse_args()
    playbook = builtin_playbooks()[args.exception_type]
    with Platform() as platform:
        examples = asyncio.run(record(playbook, platform, count=args.count, seed=args.seed,
                                      escalate_share=args.escalate_share))
    out = PLAYBOOKS_DIR / f"{args.exception_type}.examples.json"
    out.write_text(json.dumps([e.model_dump(mode="json") for e in examples], indent=1) + "\n")
    print(f"wrote {len(examples)} examples to {out}")


if __name__ == "__main__":
    main()
