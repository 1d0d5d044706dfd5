"""The playbook of an exception class, loaded from YAML (instructions) and JSON (examples).

A tiny planner decides reliably on a bounded class when it is shown approved examples of that
class and made to state the deciding evidence before each step (measured: 39/40 with 8
examples vs 20/40 without). The playbook carries both; the policy, not the playbook, decides
what may run.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from opsagent.agents.case import ExceptionReport
from opsagent.agents.playbooks.rules import FINISHES, SopRule
from opsagent.errors import ConfigError


class EvidenceField(BaseModel):
    """A fact the planner must copy from what it has read before it picks a step."""

    model_config = {"extra": "forbid"}
    values: list[str] | None = Field(
        default=None, description="Allowed values; None means the value is copied from `source`."
    )
    unknown: str = Field(default="unknown", description="The value stated before it was read.")
    description: str = Field(description="What the fact is and where it is found.")
    source: str | None = Field(
        default=None,
        description="`tool.field` the fact is read from. Once that tool has answered, the output "
        "grammar pins the fact to the value read, so the planner cannot misstate it.",
    )


class Turn(BaseModel):
    """One planner output of an example, and what the system answered."""

    model_config = {"extra": "forbid"}
    output: dict[str, Any] = Field(description="The planner step, exactly as it should be emitted.")
    observation: str | None = Field(default=None, description="The observation text that followed.")


class Example(BaseModel):
    """An approved, complete resolution of one instance of the class."""

    model_config = {"extra": "forbid"}
    report: ExceptionReport
    turns: list[Turn] = Field(min_length=1)


class Playbook(BaseModel):
    """How the planner is prompted for one exception class."""

    model_config = {"extra": "forbid"}
    exception_type: str = Field(description="The exception class this playbook is for.")
    goal: str = Field(description="One paragraph: what resolving this class means.")
    evidence: dict[str, EvidenceField] = Field(
        default_factory=dict, description="Facts stated in every step, before the tool."
    )
    observe: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per tool, the result fields the planner is shown (all when the tool is not "
        "listed). The full result is still traced; a short prompt keeps a small model focused.",
    )
    prerequisites: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per tool, the tools that must have succeeded before it is offered. "
        "`finish:resolved` names what must have succeeded before the case may be resolved.",
    )
    bindings: dict[str, str] = Field(
        default_factory=dict,
        description="`tool.arg` -> `tool.field`: once the source was read, the grammar pins the "
        "argument to the value read (amounts and weights come from the records, not the model).",
    )
    resolve_on: list[str] = Field(
        default_factory=list,
        description="Tools whose success resolves the case: the planner then finishes it as "
        "resolved without another model call (the judgment was in choosing the tool).",
    )
    escalate_on: list[str] = Field(
        default_factory=list,
        description="Tools whose success hands the case to humans (e.g. assigning the ticket to "
        "a team): the planner then finishes it as escalated without another model call.",
    )
    repeatable: list[str] = Field(
        default_factory=list,
        description="Tools offered again after they succeeded (others are offered once).",
    )
    notes: dict[str, str] = Field(
        default_factory=dict,
        description="`tool.arg` -> template of a free-text argument (a reason, a resolution, a "
        "note), composed in code instead of written by the model: `{tool.field}` is the value "
        "read, `{entity}` a case entity, `{fact}` the evidence stated. Arguments with neither a "
        "template nor a binding are written by the model (bounded by `max_string`).",
    )
    finish_reasons: dict[str, str] = Field(
        default_factory=dict,
        description="`resolved` / `escalated` -> template of the reason a finish states (same "
        "fields as `notes`); without one the reason lists the evidence.",
    )
    max_steps: int = Field(default=6, ge=1, le=20, description="Planner steps before escalation.")
    max_string: int = Field(default=100, ge=8, description="Longest free-text argument generated.")
    rules: list[SopRule] = Field(
        default_factory=list, description="SOP rules: steps not offered once the pinned evidence rules "
        "them out (agents/playbooks/rules.py); checked against this playbook's evidence and tools.")
    examples: list[Example] = Field(default_factory=list, description="Worked examples.")

    def tools(self) -> set[str]:
        """Every tool this playbook names (prerequisites, observed fields, concluding tools, bindings,
        notes)."""
        named = set(self.prerequisites) | set(self.observe) | set(self.resolve_on) | set(self.escalate_on)
        named |= set(self.repeatable) | {k.partition(".")[0] for k in (*self.bindings, *self.notes)}
        return {t for t in named if not t.startswith("finish:")}

    @model_validator(mode="after")
    def _check_rules(self) -> Playbook:
        tools, names = self.tools(), set()
        for rule in self.rules:
            where = f"rule {rule.name!r}"
            if rule.name in names:
                raise ValueError(f"{where}: two rules have this name")
            names.add(rule.name)
            for fact, values in rule.when.items():
                field = self.evidence.get(fact)
                if field is None:
                    raise ValueError(f"{where}: no evidence fact {fact!r} (facts: {sorted(self.evidence)})")
                if field.source is None:
                    raise ValueError(f"{where}: fact {fact!r} is the model's choice, not read from a "
                                     "source; a rule may only rest on pinned evidence")
                if field.values is not None and (bad := [v for v in values if v not in field.values]):
                    raise ValueError(f"{where}: {fact} can be {field.values}, not {bad}")
            for name in [*rule.read, *rule.until, *(w for w in rule.withhold if w not in FINISHES)]:
                if name not in tools:
                    raise ValueError(f"{where}: {name!r} is not a tool of this playbook "
                                     f"({', '.join(sorted(tools))}) nor one of {', '.join(FINISHES)}")
            if overlap := set(rule.until) & set(rule.withhold):
                raise ValueError(f"{where}: {sorted(overlap)} both withheld and ending the rule: "
                                 "a step the rule withholds can never succeed to end it")
        return self


def load_playbook(path: str | Path) -> Playbook:
    """Load `<name>.yaml` and, if present beside it, the examples in `<name>.examples.json`."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        examples = path.with_suffix(".examples.json")
        if examples.exists():
            data["examples"] = json.loads(examples.read_text())
        return Playbook.model_validate(data)
    except ValidationError as exc:
        raise ConfigError.invalid(f"playbook {path}", exc) from exc
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ConfigError(f"playbook {path}: {exc}") from exc


PLAYBOOKS_DIR = Path(str(resources.files(__package__)))
"""The folder of the shipped playbooks and their recorded examples (`<class>.examples.json`)."""


def builtin_playbooks() -> dict[str, Playbook]:
    """The playbooks shipped in this folder, keyed by exception class."""
    books = [load_playbook(p) for p in sorted(PLAYBOOKS_DIR.glob("*.yaml"))]
    return {b.exception_type: b for b in books}


def playbooks_with(folder: str | Path | None) -> dict[str, Playbook]:
    """The shipped playbooks plus every `<class>.yaml` in `folder` (a class's own replaces the
    shipped one of that name); ConfigError if `folder` is given but is not a folder."""
    books = builtin_playbooks()
    if folder is None:
        return books
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"playbooks folder {folder} does not exist")
    return books | {b.exception_type: b for b in map(load_playbook, sorted(folder.glob("*.yaml")))}
