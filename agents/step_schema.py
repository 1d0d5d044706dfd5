"""The JSON schema the planner's output is grammar-constrained to, rebuilt for every step.

It offers only the tools the case's class may use (so the model can never name another), and
of those only the ones whose prerequisites have succeeded and that have not succeeded already.
Each output states the class's evidence before the tool, pinned to the value read once its
source was read; an argument named like a case entity can only take that entity's value, and an
argument bound to a record field only the value read there.
Policy still checks every call: the schema makes the small model reliable, it is not the
security boundary.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from opsagent.agents.case import Case
from opsagent.agents.playbooks import Playbook
from opsagent.tools.spec import ToolSpec

FINISH = "finish"
RESOLVED_KEY = "finish:resolved"
_KEEP = {"type", "enum", "const", "properties", "required", "items", "minLength", "maxLength"}


class PlannedStep(BaseModel):
    """The planner's parsed output: a tool call, or `finish` with a status and reason."""

    evidence: dict[str, Any] = Field(default_factory=dict)
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    status: str | None = None  # for finish: "resolved" | "escalated"
    reason: str | None = None


def succeeded(case: Case) -> dict[str, Any]:
    """Tool -> last successful result in this case (in shadow mode: of a proposal's dry run)."""
    return {s.tool: s.result for s in case.steps if s.done}


MAX_REFUSALS = 2


def refused(case: Case) -> set[str]:
    """Tools that failed or were denied `MAX_REFUSALS` times in this case: not offered again."""
    counts: dict[str, int] = {}
    for s in case.steps:
        if s.verdict == "deny" or s.failed:
            counts[s.tool] = counts.get(s.tool, 0) + 1
    return {tool for tool, n in counts.items() if n >= MAX_REFUSALS}


def offered_tools(playbook: Playbook, tools: list[ToolSpec], done: dict[str, Any],
                  blocked: set[str] = frozenset()) -> list[ToolSpec]:
    """The tools worth offering now: prerequisites met, not already done (unless repeatable),
    not refused repeatedly."""
    return [
        t for t in tools
        if all(p in done for p in playbook.prerequisites.get(t.name, ()))
        and (t.name not in done or t.name in playbook.repeatable)
        and t.name not in blocked
    ]


def read_value(done: dict[str, Any], source: str) -> tuple[bool, Any]:
    """(True, value) if `tool.field` was read in this case, else (False, None)."""
    tool, _, key = source.partition(".")
    result = done.get(tool)
    if isinstance(result, dict) and key in result:
        return True, result[key]
    return False, None


def evidence_schema(playbook: Playbook, done: dict[str, Any]) -> dict:
    """Each fact: `unknown` until its source was read, then exactly the value read."""
    props = {}
    for name, field in playbook.evidence.items():
        values: list[Any] = [field.unknown, *(field.values or [])]
        if field.source:
            found, read = read_value(done, field.source)
            if not found:
                values = [field.unknown]
            elif field.values is None or str(read) in field.values:
                values = [read]
        props[name] = {"enum": values}
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


def step_schema(playbook: Playbook, tools: list[ToolSpec], case: Case) -> dict:
    """The schema of the next step of `case`."""
    done = succeeded(case)
    evidence = evidence_schema(playbook, done)
    variants = [_tool_variant(t, evidence, pins(playbook, t, case, done), playbook.max_string)
                for t in offered_tools(playbook, tools, done, refused(case))]
    can_resolve = all(p in done for p in playbook.prerequisites.get(RESOLVED_KEY, ()))
    variants.append({
        "type": "object",
        "properties": {
            "evidence": evidence,
            "tool": {"const": FINISH},
            "status": {"enum": ["resolved", "escalated"] if can_resolve else ["escalated"]},
            "reason": {"type": "string", "minLength": 3, "maxLength": playbook.max_string},
        },
        "required": ["evidence", "tool", "status", "reason"],
        "additionalProperties": False,
    })
    return {"anyOf": variants}


def pins(playbook: Playbook, tool: ToolSpec, case: Case, done: dict[str, Any]) -> dict[str, Any]:
    """Argument values fixed by the case: its entities, and `tool`'s bindings whose source was
    read (only the names among the tool's parameters are used)."""
    pins: dict[str, Any] = dict(case.report.entities)
    for target, source in playbook.bindings.items():
        name, _, arg = target.partition(".")
        found, value = read_value(done, source)
        if name == tool.name and found:
            pins[arg] = value
    return pins


def _tool_variant(tool: ToolSpec, evidence: dict, pins: dict[str, Any], max_string: int) -> dict:
    return {
        "type": "object",
        "properties": {
            "evidence": evidence,
            "tool": {"const": tool.name},
            "args": _generation_schema(tool.parameters, pins, max_string),
        },
        "required": ["evidence", "tool", "args"],
        "additionalProperties": False,
    }


def _generation_schema(params: dict, pins: dict[str, Any], max_string: int) -> dict:
    """The tool's argument schema narrowed for generation: pinned values, bounded strings."""
    props = {}
    for name, prop in (params.get("properties") or {}).items():
        if name in pins:
            props[name] = {"enum": [pins[name]]}
            continue
        prop = {k: v for k, v in prop.items() if k in _KEEP}
        if prop.get("type") == "string" and "enum" not in prop:
            prop["maxLength"] = min(prop.get("maxLength", max_string), max_string)
        props[name] = prop
    return {
        "type": "object",
        "properties": props,
        "required": list(params.get("required") or []),
        "additionalProperties": False,
    }
