"""Frozen eval sets as files, and the train / held-out split by seed.

The split rule: a seed below `TRAINING_SEEDS_FROM` (1,000,000) is **held out**: eval sets and the
demo use those seeds, and nothing that tunes the agent (worked examples, prompt or policy tuning)
may. Seeds from 1,000,000 up are **training** seeds: `evals/playbook_examples.py` records worked
examples only from them and refuses the others. Every instance of a set is made from the set's
seed, so a whole set is on one side of the split.

`write_eval_set` writes a folder:
- `instances.jsonl`: one instance per line (description, entities, the records to plant, gold);
- `human_log.jsonl`: one line per instance, what the ops team did (for shadow-mode comparison);
- `manifest.json`: seed, split, classes and counts, the sha256 of both files, and `wording` for a
  varied-wording set (`catalogue make --wording varied`).
The same seed and counts always give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from opsagent.errors import InputError
from opsagent.evals.catalogue import CLASSES, HumanLog, Instance, make, vary

TRAINING_SEEDS_FROM = 1_000_000
Split = Literal["heldout", "train"]


def split_of(seed: int) -> Split:
    """`heldout` for seeds below 1,000,000, `train` from there on (negative seeds are refused)."""
    if seed < 0:
        raise InputError(f"seeds are >= 0, got {seed}")
    return "heldout" if seed < TRAINING_SEEDS_FROM else "train"


def require_training_seed(seed: int) -> None:
    """InputError unless `seed` is a training seed (for anything that tunes the agent)."""
    if split_of(seed) != "train":
        raise InputError(f"seed {seed} is held out (below {TRAINING_SEEDS_FROM:,}); tuning and worked "
                         "examples must use training seeds")


def make_eval_set(seed: int, per_class: int, classes: list[str] | None = None,
                  wording: str = "template") -> list[Instance]:
    """`per_class` instances of each class (all classes by default), from `seed`, with the
    generators' template descriptions or (`wording="varied"`) re-worded ones (`catalogue.vary`)."""
    if per_class < 1:
        raise InputError("per_class must be >= 1")
    made = [inst for name in (classes or list(CLASSES)) for inst in make(name, seed=seed, count=per_class)]
    return vary(made, wording)


def write_eval_set(instances: list[Instance], out: Path, *, seed: int, wording: str = "template") -> dict:
    """Write the set's files into `out` (created if missing); returns the manifest (which names
    the wording only when it is not the template one, so template sets keep their bytes)."""
    out.mkdir(parents=True, exist_ok=True)
    cases = "".join(inst.model_dump_json(exclude={"human"}) + "\n" for inst in instances)
    human = "".join(json.dumps({"instance_id": i.instance_id, **(i.human.model_dump() if i.human else {})},
                               ensure_ascii=False) + "\n" for i in instances)
    classes: dict[str, dict] = {}
    for inst in instances:
        c = classes.setdefault(inst.exception_type, {"count": 0, "escalated": 0, "high_risk": 0})
        c["count"] += 1
        c["escalated"] += inst.gold.outcome == "escalated"
        c["high_risk"] += any(a.risk == "high" for a in inst.gold.actions)
    files = {"instances.jsonl": cases, "human_log.jsonl": human}
    manifest = {"seed": seed, "split": split_of(seed), "instances": len(instances), "classes": classes,
                "files": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()}}
    if wording != "template":
        manifest["wording"] = wording
    for name, text in files.items():
        (out / name).write_text(text)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def load_eval_set(folder: Path) -> list[Instance]:
    """Read a set written by `write_eval_set` (InputError if a file is missing or was changed)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        texts = {name: (folder / name).read_text() for name in manifest["files"]}
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{folder} is not an eval set: {exc}") from exc
    for name, digest in manifest["files"].items():
        if hashlib.sha256(texts[name].encode()).hexdigest() != digest:
            raise InputError(f"{folder / name} does not match its manifest digest (edited after make?)")
    logs = {}
    for line in texts["human_log.jsonl"].splitlines():
        data = json.loads(line)
        logs[data.pop("instance_id")] = HumanLog.model_validate(data) if data else None
    out = []
    for line in texts["instances.jsonl"].splitlines():
        inst = Instance.model_validate_json(line)
        out.append(inst.model_copy(update={"human": logs.get(inst.instance_id)}))
    return out
