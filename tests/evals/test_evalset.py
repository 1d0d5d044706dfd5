"""Frozen eval sets as files, the split by seed, and the CLI functions `catalogue list | make`."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest

from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.errors import InputError
from opsagent.evals import cli
from opsagent.evals.catalogue import CLASSES
from opsagent.evals.evalset import (
    TRAINING_SEEDS_FROM, load_eval_set, make_eval_set, require_training_seed, split_of, write_eval_set,
)
from opsagent.evals.playbook_examples import TRAINING_SEED, record


def test_split_by_seed():
    assert split_of(0) == split_of(7) == split_of(TRAINING_SEEDS_FROM - 1) == "heldout"
    assert split_of(TRAINING_SEEDS_FROM) == split_of(TRAINING_SEED) == "train"
    with pytest.raises(InputError):
        split_of(-1)
    with pytest.raises(InputError, match="held out"):
        require_training_seed(7)
    require_training_seed(TRAINING_SEED)


def test_examples_are_never_recorded_from_held_out_seeds(platform):
    with pytest.raises(InputError, match="held out"):
        asyncio.run(record(builtin_playbooks()["damage_claim"], platform, count=1, seed=42))


def test_write_and_load_a_frozen_set(tmp_path):
    instances = make_eval_set(7, 3)
    manifest = write_eval_set(instances, tmp_path / "a", seed=7)
    assert manifest["split"] == "heldout" and manifest["instances"] == 3 * len(CLASSES)
    assert set(manifest["classes"]) == set(CLASSES)
    assert sum(c["escalated"] for c in manifest["classes"].values()) == sum(
        i.gold.outcome == "escalated" for i in instances)
    assert load_eval_set(tmp_path / "a") == instances  # gold, setup and human log survive the files

    write_eval_set(make_eval_set(7, 3), tmp_path / "b", seed=7)
    for name in ("instances.jsonl", "human_log.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    first = json.loads((tmp_path / "a" / "instances.jsonl").read_text().splitlines()[0])
    assert "human" not in first and {"gold", "setup", "description", "entities"} <= set(first)

    cases = tmp_path / "a" / "instances.jsonl"
    cases.write_text(cases.read_text().replace("resolved", "escalated", 1))
    with pytest.raises(InputError, match="digest"):
        load_eval_set(tmp_path / "a")
    with pytest.raises(InputError, match="not an eval set"):
        load_eval_set(tmp_path / "missing")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="opsagent")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_list(capsys):
    assert cli.run(_parse(["catalogue", "list"])) == 0
    out = capsys.readouterr().out
    for name, cls in CLASSES.items():
        (row,) = [line for line in out.splitlines() if line.startswith(name + " ")]
        assert f"{cls.escalate_share:.0%}" in row and cls.systems[0] in row
    assert "erp_issue_credit (high/low)" in out and "erp_issue_refund (high)" in out


def test_cli_make(tmp_path, capsys):
    out = tmp_path / "set"
    args = _parse(["catalogue", "make", "--seed", "1000042", "--per-class", "2", "--out", str(out),
                   "--classes", "damage_claim,missed_pickup"])
    assert cli.run(args) == 0
    assert "wrote 4 instances of 2 classes" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"] == "train" and set(manifest["classes"]) == {"damage_claim", "missed_pickup"}
    assert len(load_eval_set(out)) == 4
    with pytest.raises(InputError, match="unknown exception class"):
        cli.run(_parse(["catalogue", "make", "--seed", "1", "--out", str(out), "--classes", "nope"]))
    with pytest.raises(SystemExit):
        _parse(["catalogue", "make", "--per-class", "2"])  # --seed and --out are required
