"""The 11th class on the real embedded model: in shadow, first with no worked example, then with
examples taken from its own cases that ops' log confirmed (configuration only, as in
test_new_exception_class.py). Prints the figures; asserts only what must hold whatever the model
decides."""

from __future__ import annotations

import asyncio

import pytest

from opsagent.agents.engines.vllm_engine import VllmEngine, VllmEngineConfig
from opsagent.agents.approved_examples import with_approved_examples
from opsagent.agents.playbooks.model import playbooks_with
from opsagent.evals.evalset import TRAINING_SEEDS_FROM, write_eval_set
from opsagent.evals.verdicts import compare_human_log, record_verdicts
from opsagent.policy.config import PolicyConfig
from opsagent.tools.building import build_registry
from opsagent.tools.sources import load_sources
from tests.evals.test_new_exception_class import client_config
from tests.fakes.ladder_walk import Ladder
from tests.fakes.terminal_service import CLASS, TerminalService, make_cases

pytestmark = pytest.mark.engine
BATCH = 12


def test_the_new_class_on_the_embedded_model(tmp_path, capsys):
    history, charges = make_cases(TRAINING_SEEDS_FROM + 3031, 2 * BATCH)
    first, second = history[:BATCH], history[BATCH:]
    with TerminalService(charges) as service:
        config = client_config(tmp_path, service.url)
        registry = build_registry(load_sources(config / "sources.yaml"))
        policy = PolicyConfig.from_yaml(config / "policy.yaml")
        book = playbooks_with(config / "playbooks")[CLASS]
        ladder = Ladder(registry, policy, book, tmp_path)

        def judge(batch, name):
            write_eval_set(batch, tmp_path / name, seed=batch[0].seed)
            report = compare_human_log(ladder.traces, tmp_path / name / "human_log.jsonl")
            mine = [v for v in report.verdicts if v.details["instance_id"] in {i.instance_id for i in batch}]
            record_verdicts(ladder.traces, mine, ladder.store, policy)
            return mine

        async def run():
            engine = VllmEngine(VllmEngineConfig())
            await engine.start()
            try:
                bare = await ladder.run(first, engine_for=lambda inst: engine)
                judged_bare = judge(first, "first")
                books, found = with_approved_examples({CLASS: book}, ladder.traces, 2)
                taught = await ladder.run(second, engine_for=lambda inst: engine, playbook=books[CLASS])
                judged_taught = judge(second, "second")
            finally:
                await engine.close()
                await ladder.close()
            return bare, judged_bare, books[CLASS], found[0], taught, judged_taught

        bare, judged_bare, taught_book, found, taught, judged_taught = asyncio.run(run())

    with capsys.disabled():
        for name, judged in (("no examples", judged_bare), (f"{len(found.case_ids)} examples", judged_taught)):
            right = sum(v.correct for v in judged)
            wrong = [f"{v.details['instance_id']}: {v.reason}" for v in judged if not v.correct]
            print(f"\n{CLASS}, shadow, {name}: {right}/{len(judged)} agree with ops' log", *wrong, sep="\n  ")
    assert ladder.mode() == "shadow"  # 24 verdicts are far from the gate's 200: it stays in shadow
    for cases, judged in ((bare, judged_bare), (taught, judged_taught)):
        # shadow never writes: a case ends proposed, escalated, or resolved having nothing to write
        assert {c.status.value for c in cases} <= {"proposed", "escalated", "resolved"}
        assert not [s for c in cases for s in c.steps if s.executed and registry.get(s.tool).writes]
        assert len(judged) == BATCH
    approved = {v.case_id for v in judged_bare if v.correct}
    assert set(found.case_ids) <= approved and len(taught_book.examples) == len(found.case_ids)
