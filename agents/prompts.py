"""The planner's conversation: instructions, worked examples, then the case so far."""

from __future__ import annotations

import json
from typing import Any

from opsagent.agents.case import Case, ExceptionReport, Step
from opsagent.agents.engines.base import ChatMessage
from opsagent.agents.playbooks import Playbook
from opsagent.tools.spec import ToolSpec

SYSTEM = """You are an operations agent of a logistics platform. You resolve one exception at a \
time by calling tools, one per turn, and you read each result before the next turn.
Exception class: {exception_type}. {goal}
Tools:
{tools}
- finish(status, reason): end the case as "resolved" or "escalated" (a human takes over).
Before every step, state the evidence: {evidence}
Answer with one JSON object only."""


def compact(value: Any) -> str:
    """Compact JSON, the form observations and outputs take in the prompt."""
    return json.dumps(value, separators=(",", ":"), sort_keys=False, default=str)


def case_message(report: ExceptionReport) -> str:
    return (
        f"New exception ({report.exception_type}). Entities: {compact(report.entities)}.\n"
        f"Description from ops: {report.description}"
    )


def observation_message(step: Step, observe: dict[str, list[str]] | None = None) -> str:
    """What the planner is told after a step: the result (only the `observe` fields, if listed
    for the tool), the failure, or the policy's refusal with its reasons."""
    if step.verdict == "deny":
        return f"Policy denied {step.tool}: {'; '.join(step.reasons)}"
    if step.verdict == "require_approval" and not step.executed:
        if step.error:
            return f"A human did not approve {step.tool} ({step.error}); it was not run."
        return f"{step.tool} needs human approval and was not run."
    if step.ok:
        result = step.result
        fields = (observe or {}).get(step.tool)
        if fields and isinstance(result, dict):
            result = {k: result[k] for k in fields if k in result}
        return f"Result of {step.tool}: {compact(result)}"
    return f"{step.tool} failed: {step.error or compact(step.result)}"


def step_output(step: Step) -> str:
    return compact(step_turn(step))


def step_turn(step: Step) -> dict[str, Any]:
    """A taken step as the planner's output that proposed it."""
    return {"evidence": step.evidence, "tool": step.tool, "args": step.args}


def build_messages(playbook: Playbook, tools: list[ToolSpec], case: Case) -> list[ChatMessage]:
    """System instructions, the playbook's examples as earlier turns, then this case's turns.

    Everything before this case's first message is identical for every case of the class, so
    vLLM's prefix cache computes it once.
    """
    evidence = "; ".join(f"{k} = {f.description} ({f.unknown!r} until read)"
                         for k, f in playbook.evidence.items()) or "none"
    system = SYSTEM.format(
        exception_type=playbook.exception_type,
        goal=playbook.goal,
        tools="\n".join(_tool_line(t) for t in tools),
        evidence=evidence,
    )
    messages = [ChatMessage(role="system", content=system)]
    for example in playbook.examples:
        messages.append(ChatMessage(role="user", content=case_message(example.report)))
        for turn in example.turns:
            messages.append(ChatMessage(role="assistant", content=compact(turn.output)))
            if turn.observation is not None:
                messages.append(ChatMessage(role="user", content=turn.observation))
    messages.append(ChatMessage(role="user", content=case_message(case.report)))
    for step in case.steps:
        messages.append(ChatMessage(role="assistant", content=step_output(step)))
        messages.append(ChatMessage(role="user", content=observation_message(step, playbook.observe)))
    return messages


def _tool_line(tool: ToolSpec) -> str:
    props = tool.parameters.get("properties") or {}
    args = ", ".join(f"{name}: {p.get('type', 'any')}" for name, p in props.items())
    return f"- {tool.name}({args}): {tool.description.strip().splitlines()[0] if tool.description else ''}"
