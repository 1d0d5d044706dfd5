"""Record a playbook's worked examples: gold resolutions run for real on the sandbox platform.

`python -m opsagent.agents.playbooks.record weight_mismatch` writes
`weight_mismatch.examples.json` beside the playbook. The instances come from a training seed that
the demo and the evals do not use, so the examples never contain an instance being scored.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from opsagent.agents.case import Case, ExceptionReport
from opsagent.agents.engines.scripted import ScriptedEngine
from opsagent.agents.executor import Executor
from opsagent.agents.local import LocalPolicy, LocalTracer
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import Example, Playbook, Turn, builtin_playbooks
from opsagent.agents.prompts import observation_message
from opsagent.agents.runner import CaseRunner
from opsagent.agents.tracing.exporters import InMemoryExporter
from opsagent.evals.gold import gold_step
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine
from opsagent.tools.platform.launcher import Platform
from opsagent.tools.platform.scenarios import inject_weight_mismatch

TRAINING_SEED = 1_000_003


async def record(playbook: Playbook, platform: Platform, *, count: int, seed: int) -> list[Example]:
    """Run the gold resolution of `count` injected instances; return them as examples."""
    registry = platform.registry()
    engine = PolicyEngine(load_default_policy(), registry)
    policy = LocalPolicy(engine)
    executor = Executor(registry, engine.permit_key)
    instances = inject_weight_mismatch(platform.base_urls, count=count, seed=seed, suspect_share=0.5)
    examples = []
    for inst in instances:
        engine = ScriptedEngine([gold_step] * playbook.max_steps)
        bare = playbook.model_copy(update={"examples": []})
        planner = Planner(engine, {playbook.exception_type: bare}, registry)
        runner = CaseRunner(planner, policy, executor, LocalTracer(InMemoryExporter()), registry,
                            max_steps=playbook.max_steps)
        report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                 entities=inst.entities)
        case = await runner.run(Case(report=report))
        if case.status.value != inst.expected_status:
            raise RuntimeError(f"gold run of {inst.entities} ended {case.status}, expected {inst.expected_status}")
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
    parser.add_argument("--seed", type=int, default=TRAINING_SEED)
    args = parser.parse_args()
    playbook = builtin_playbooks()[args.exception_type]
    with Platform() as platform:
        examples = asyncio.run(record(playbook, platform, count=args.count, seed=args.seed))
    out = Path(__file__).with_name(f"{args.exception_type}.examples.json")
    out.write_text(json.dumps([e.model_dump(mode="json") for e in examples], indent=1) + "\n")
    print(f"wrote {len(examples)} examples to {out}")


if __name__ == "__main__":
    main()
