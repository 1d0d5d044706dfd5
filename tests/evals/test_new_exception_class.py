"""An 11th exception class added the way a client adds one: configuration only.

The client's files (`examples/demurrage_charge/`: an OpenAPI document, a policy, a playbook, a
system config; YAML and JSON, no Python) are copied into a fresh folder; the tool source is made
with `opsagent tools import openapi`; the class starts in shadow, and is walked up the ladder on
the gates' own scale (200 verdicts per stage) with a scripted planner and a simulated ops team
(tests/fakes/ladder_walk.py); its worked examples then come from its own human-approved traces.
docs/new-exception-class.md is the how-to these steps follow.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from opsagent.agents.approved_examples import with_approved_examples
from opsagent.agents.playbooks.model import builtin_playbooks, playbooks_with
from opsagent.agents.engines.scripted import ScriptedEngine
from opsagent.cli import main
from opsagent.cluster.config import SystemConfig
from opsagent.cluster.system import OpsAgentSystem
from opsagent.errors import ConfigError
from opsagent.evals.catalogue import CLASSES
from opsagent.evals.evalset import TRAINING_SEEDS_FROM
from opsagent.policy.config import PolicyConfig, load_default_policy
from opsagent.tools.building import build_registry
from opsagent.tools.sources import load_sources
from tests.fakes.ladder_walk import Ladder
from tests.fakes.terminal_service import CLASS, TerminalService, export_openapi, make_cases

EXAMPLE = Path(__file__).parents[2] / "examples" / "demurrage_charge"
SEED = TRAINING_SEEDS_FROM + 2027


def client_config(dest: Path, base_url: str) -> Path:
    """Steps 1-3 of the how-to: the client's data files, and the tool source imported from the
    OpenAPI document with the CLI. Only YAML and JSON are copied."""
    config = dest / "config"
    for path in EXAMPLE.rglob("*"):
        if path.is_file():
            assert path.suffix in (".yaml", ".json"), f"{path} is not configuration"
            target = config / path.relative_to(EXAMPLE)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    assert main(["tools", "import", "openapi", str(config / "terminal.openapi.json"), "--name", "terminal",
                 "--base-url", base_url, "--out", str(config / "sources.yaml")]) == 0
    assert not [p for p in config.rglob("*") if p.suffix == ".py"]
    return config


def test_the_class_is_new_to_the_product():
    assert CLASS not in CLASSES and CLASS not in builtin_playbooks()
    assert CLASS not in load_default_policy().classes


def test_the_shipped_document_is_the_services_own():
    assert json.loads((EXAMPLE / "terminal.openapi.json").read_text()) == export_openapi()


def test_a_missing_playbooks_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        playbooks_with(tmp_path / "nowhere")


def test_walk_up_the_ladder_from_configuration_only(tmp_path, monkeypatch, capsys):
    history, charges = make_cases(SEED, 460)
    shadow, supervised, autonomous = history[:200], history[200:400], history[400:]
    with TerminalService(charges) as service:
        config = client_config(tmp_path, service.url)
        registry = build_registry(load_sources(config / "sources.yaml"))
        assert sorted(registry.names()) == ["terminal_approve_charge", "terminal_audit_charge",
                                            "terminal_dispute_charge", "terminal_get_charge",
                                            "terminal_refer_charge"]
        policy = PolicyConfig.from_yaml(config / "policy.yaml")
        monkeypatch.chdir(tmp_path)  # system.yaml's paths are relative to where opsagent starts
        system = SystemConfig.from_yaml(config / "system.yaml")
        books = playbooks_with(system.playbooks_dir)
        assert CLASS in books and set(builtin_playbooks()) < set(books)
        ladder = Ladder(registry, policy, books[CLASS], tmp_path,
                        state_of=lambda inst: service.statuses()[inst.entities["charge_id"]])
        assert ladder.mode() == "shadow"

        async def walk():
            shadow_cases = await ladder.run(shadow)
            first = ladder.stage(shadow, shadow_cases, tmp_path / "shadow")
            # in shadow, the cases ops' log confirmed are already the class's worked examples
            _, (early,) = with_approved_examples({CLASS: books[CLASS]}, tmp_path / "traces", 2)
            assert len(early.case_ids) == 2 and set(early.case_ids) <= {c.case_id for c in shadow_cases}
            supervised_cases = await ladder.run(supervised)
            second = ladder.stage(supervised, supervised_cases, tmp_path / "supervised")
            autonomous_cases = await ladder.run(autonomous)
            third = ladder.stage(autonomous, autonomous_cases, tmp_path / "autonomous")
            await ladder.close()
            return shadow_cases, first, second, third

        shadow_cases, first, second, third = asyncio.run(walk())
        with capsys.disabled():
            print("\n" + "\n".join(s.line() for s in ladder.stages))

    # shadow: nothing written; every case judged against ops' log, the log's own errors included
    assert {c.status.value for c in shadow_cases} <= {"proposed", "escalated"}
    ops_errors = sum(i.human.deviation is not None for i in shadow)
    assert (first.verdicts, first.correct) == (200, 200 - ops_errors) and ops_errors > 0
    assert first.promoted_to == "supervised" and first.approvals == 0
    # supervised: every write waited for the approver, who granted each (the gold's writes)
    assert second.approvals == 200 and (second.verdicts, second.correct) == (200, 200)
    assert second.promoted_to == "autonomous"
    # autonomous: low-risk writes ran alone; approvals above 1000 EUR only
    high = sum(any(a.risk == "high" for a in i.gold.actions) for i in autonomous)
    assert third.approvals == high > 0 and third.promoted_to is None
    assert third.unsupervised_writes == len(autonomous) - high == third.unsupervised_right
    assert third.end_state_right == len(autonomous)

    # worked examples from the class's own human-approved traces, and a deployment picks them up
    retrieved, found = with_approved_examples({CLASS: books[CLASS]}, tmp_path / "traces", 2)
    examples = retrieved[CLASS].examples
    assert len(examples) == 2 and found[0].approved_cases >= 380
    walked = {i.entities["charge_id"] for i in history}
    assert all(e.report.entities["charge_id"] in walked for e in examples)
    assert {e.turns[-1].output.get("status", "tool-ended") for e in examples} >= {"escalated"}
    deployed = OpsAgentSystem(system, registry, engine=ScriptedEngine([]))  # actors not started
    assert deployed.playbooks[CLASS].examples == examples
    assert deployed.retrieved and {r.exception_type for r in deployed.retrieved} >= {CLASS}
