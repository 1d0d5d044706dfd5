"""The steps the planner may take next, built in code: the model only chooses among them.

A step's schema leaves the model a finite choice (which offered tool, which value of an enum
argument, resolved or escalated); everything else is fixed before the model is asked: the
evidence is pinned to what the case read, arguments named like a case entity to that entity,
bound arguments to the value read (as the system of record returned it), and notes and finish
reasons composed from the playbook's wording (`Playbook.notes`, `Playbook.finish_reasons`).
Only a required argument with no pin and no template is left `free`, for the model to write.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from pydantic import BaseModel, Field

from opsagent.agents.case import Case
from opsagent.agents.playbooks import Playbook
from opsagent.agents.playbooks.rules import overruled, setback, withheld_by
from opsagent.agents.prompts import compact
from opsagent.agents.step_schema import (
    FINISH, RESOLVED_KEY, PlannedStep, offered_tools, pins, read_value, refused, succeeded,
)
from opsagent.tools.spec import ToolSpec

ESCALATE = f"{FINISH}:escalated"

MAX_CANDIDATES = 64
MAX_REASON = 300
_FIELD = re.compile(r"\{([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)?)\}")


class Candidate(BaseModel):
    """One step the planner may take: complete but for its `free` arguments."""

    step: PlannedStep
    free: list[str] = Field(default_factory=list, description="Required arguments with no pin and "
                            "no template: the model writes them once this candidate is chosen.")
    enum_args: list[str] = Field(default_factory=list, description="Arguments whose enum value "
                                 "this candidate chose (one candidate per value).")

    @property
    def decision(self) -> str:
        """What tells this candidate apart: the tool, the finish status, the enum arguments."""
        if self.step.tool == FINISH:
            return f"{FINISH}:{self.step.status}"
        chosen = [f"{k}={self.step.args[k]}" for k in self.enum_args]
        return self.step.tool + (f"({','.join(chosen)})" if chosen else "")

    def option(self) -> str:
        """The candidate as the start of the planner's reply, up to its first free argument's
        value (or whole): the text the engine scores."""
        if not self.free:
            return compact(reply(self.step))
        return reply_up_to(self.step, self.free[0])


def evidence_values(playbook: Playbook, done: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of evidence the step may state: a fact whose source was read is that
    value (as read), an unread one its `unknown`; a fact with no source is the model's choice."""
    names, choices = [], []
    for name, field in playbook.evidence.items():
        names.append(name)
        if field.source:
            found, read = read_value(done, field.source)
            choices.append([read] if found else [field.unknown])
        else:
            choices.append([field.unknown, *(field.values or [])])
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices)]


class Withheld(BaseModel):
    """A step the playbook's SOP rule kept from the planner (agents/playbooks/rules.py)."""

    decision: str = Field(description="The tool, or `finish:<status>`, not offered.")
    rule: str = Field(description="The name of the rule that withheld it.")


class Offer(BaseModel):
    """The candidates for a step, and what the playbook's rules withheld to leave them."""

    candidates: list[Candidate]
    withheld: list[Withheld] = Field(default_factory=list)


def build_candidates(playbook: Playbook, tools: list[ToolSpec], case: Case) -> list[Candidate]:
    """The candidates for the next step of `case`, tools first, then finishing."""
    return offer(playbook, tools, case).candidates


def offer(playbook: Playbook, tools: list[ToolSpec], case: Case) -> Offer:
    """The candidates for the next step of `case` (tools first, then finishing), and the steps
    the playbook's rules withheld on the evidence pinned."""
    done = succeeded(case)
    found: list[Candidate] = []
    for evidence in evidence_values(playbook, done):
        for tool in offered_tools(playbook, tools, done, refused(case)):
            found.extend(_tool_candidates(playbook, tool, case, done, evidence))
        can_resolve = all(p in done for p in playbook.prerequisites.get(RESOLVED_KEY, ()))
        for status in (["resolved", "escalated"] if can_resolve else ["escalated"]):
            reason = compose(playbook.finish_reasons.get(status), case, done, evidence) \
                or _default_reason(status, evidence, case)
            if (cause := _setback(case, tools)) is not None:
                reason = f"{cause} {reason}"
            found.append(Candidate(step=PlannedStep(evidence=evidence, tool=FINISH, status=status,
                                                    reason=reason[:MAX_REASON])))
    kept, withheld = sop_filter(playbook, case, done, found)
    return Offer(candidates=kept[:MAX_CANDIDATES], withheld=withheld)


def sop_filter(playbook: Playbook, case: Case, done: dict[str, Any],
               candidates: list[Candidate]) -> tuple[list[Candidate], list[Withheld]]:
    """`candidates` without the steps the playbook's rules withhold on the evidence pinned
    (agents/playbooks/rules.py), and what was withheld by which rule: never the escalation after
    a setback, nothing after a human's rejection, and nothing if the rules would leave no
    candidate."""
    if not playbook.rules or overruled(case):
        return candidates, []
    escalation_open = setback(case)
    kept: list[Candidate] = []
    withheld: dict[tuple[str, str], Withheld] = {}
    for c in candidates:
        decision = f"{FINISH}:{c.step.status}" if c.step.tool == FINISH else c.step.tool
        rule = None if escalation_open and decision == ESCALATE else \
            withheld_by(playbook.rules, decision, c.step.evidence, done)
        if rule is None:
            kept.append(c)
        else:
            withheld.setdefault((decision, rule.name), Withheld(decision=decision, rule=rule.name))
    return (kept, list(withheld.values())) if kept else (candidates, [])


def _tool_candidates(playbook: Playbook, tool: ToolSpec, case: Case, done: dict[str, Any],
                     evidence: dict[str, Any]) -> list[Candidate]:
    props = tool.parameters.get("properties") or {}
    required = set(tool.parameters.get("required") or ())
    pinned = pins(playbook, tool, case, done)
    fixed: dict[str, list[Any]] = {}
    free: list[str] = []
    enums: set[str] = set()
    for name, prop in props.items():
        if name in pinned:
            fixed[name] = [pinned[name]]
        elif (note := compose(playbook.notes.get(f"{tool.name}.{name}"), case, done, evidence)):
            fixed[name] = [note[:playbook.max_string]]
        elif name in required and prop.get("enum"):
            fixed[name] = list(prop["enum"])
            enums.add(name)
        elif name in required:
            fixed[name] = [None]
            free.append(name)
    out = []
    for combo in itertools.product(*fixed.values()):
        args = dict(zip(fixed, combo, strict=True))
        out.append(Candidate(step=PlannedStep(evidence=evidence, tool=tool.name, args=args),
                             free=free, enum_args=[n for n in fixed if n in enums]))
    return out


def compose(template: str | None, case: Case, done: dict[str, Any],
            evidence: dict[str, Any]) -> str | None:
    """Fill a playbook template: `{tool.field}` with the value read, `{entity}` with the case's
    entity, `{evidence_name}` with the fact stated. None if a field it names is not known yet."""
    if not template:
        return None
    missing = False

    def value(match: re.Match) -> str:
        nonlocal missing
        ref = match.group(1)
        if "." in ref:
            found, read = read_value(done, ref)
        elif ref in case.report.entities:
            found, read = True, case.report.entities[ref]
        else:
            found, read = ref in evidence, evidence.get(ref)
        if not found or read is None:
            missing = True
            return ""
        return read if isinstance(read, str) else json.dumps(read)

    text = _FIELD.sub(value, template)
    return None if missing else text


def _setback(case: Case, tools: list[ToolSpec]) -> str | None:
    """What went wrong in the last step, if it failed or was refused: a finish says so first."""
    last = case.steps[-1] if case.steps else None
    if last is None:
        return None
    if last.verdict == "deny":
        return f"Policy denied {last.tool}: {'; '.join(last.reasons)[:120]}."
    if last.verdict == "require_approval" and not last.executed and last.error:
        return f"A human did not approve {last.tool}: {last.error[:120]}."
    if last.failed:
        writes = next((t.writes for t in tools if t.name == last.tool), True)
        return f"{last.tool} could not be {'carried out' if writes else 'read'}: " \
            f"{(last.error or 'failed')[:120]}."
    return None


def _default_reason(status: str, evidence: dict[str, Any], case: Case) -> str:
    stated = ", ".join(f"{k} {v}" for k, v in evidence.items())
    last = next((s.tool for s in reversed(case.steps) if s.done), None)
    text = "Resolved" if status == "resolved" else "Escalated for a human"
    return f"{text}: {stated or 'no evidence'}" + (f", after {last}." if last else ".")


def reply_up_to(step: PlannedStep, arg: str) -> str:
    """The step's reply as text, cut just before the value of argument `arg`."""
    text = compact(reply(step))
    marker = f'"{arg}":'
    return text[:text.index(marker) + len(marker)]


def reply(step: PlannedStep) -> dict[str, Any]:
    """The step as the planner's reply (the form of the playbooks' worked examples)."""
    if step.tool == FINISH:
        return {"evidence": step.evidence, "tool": FINISH, "status": step.status, "reason": step.reason}
    return {"evidence": step.evidence, "tool": step.tool, "args": step.args}
