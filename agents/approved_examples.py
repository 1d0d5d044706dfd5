"""Worked examples retrieved from human-approved traces of the same class (few-shot retrieval).

A traced case is *human-approved* when a person stood behind what it did:
- its latest verdict (`verdicts` table) says correct: its writes and outcome agreed with what
  ops did (shadow-mode comparison) or an operator reviewed it correct; or
- it has no verdict, a human approved at least one of its held writes and none was rejected or
  left to expire (supervised mode: the approver saw and granted every write).
A case the agent handled alone and nobody judged is not an example, nor is one that failed.
Of those, only clean runs become examples: resolved or escalated by the planner's own finish or
by a playbook's concluding tool, no step denied, failed or not run. The examples are rebuilt
from the trace store alone: each step's output as the planner states it (`prompts.step_turn`)
and the observation it was then shown, so they read exactly like the shipped worked examples.

Per class the most recent examples are taken, one per outcome first (a resolved and an escalated
one, when both exist) so the model sees both ways a case of the class can end.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import closing
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from opsagent.agents.case import Step
from opsagent.agents.playbooks.model import Example, Playbook, Turn
from opsagent.agents.prompts import observation_message, step_turn
from opsagent.agents.step_schema import FINISH
from opsagent.agents.tracing.replay import CaseTrace, load_case_trace, steps_of
from opsagent.agents.tracing.views import connect, query, sql_string

log = logging.getLogger(__name__)

Placement = Literal["first", "last"]

_APPROVED_CASES = """
WITH verdict AS (
  SELECT case_id, arg_max(correct, recorded_at) AS correct FROM verdicts GROUP BY case_id
), approval AS (
  SELECT case_id, count(*) FILTER (WHERE status = 'approved') AS approved,
         count(*) FILTER (WHERE status IN ('rejected', 'expired')) AS refused
  FROM approvals GROUP BY case_id
)
SELECT c.case_id, c.status
FROM cases c
LEFT JOIN verdict v USING (case_id)
LEFT JOIN approval a USING (case_id)
WHERE c.exception_type = {exception_type}
  AND c.status IN ('resolved', 'escalated', 'proposed')
  AND (v.correct OR (v.correct IS NULL AND coalesce(a.approved, 0) > 0 AND coalesce(a.refused, 0) = 0))
ORDER BY c.finished_at DESC NULLS LAST, c.case_id
"""


class RetrievedExamples(BaseModel):
    """What retrieval found for one class."""

    exception_type: str
    approved_cases: int = Field(description="Human-approved cases of the class in the store.")
    case_ids: list[str] = Field(description="The cases turned into examples, in prompt order.")


def approved_examples(root: Path | str, playbook: Playbook, limit: int) -> tuple[list[Example], RetrievedExamples]:
    """Up to `limit` worked examples of `playbook`'s class from the human-approved cases traced
    under `root` (see the module docstring); an empty or missing store gives none."""
    found = RetrievedExamples(exception_type=playbook.exception_type, approved_cases=0, case_ids=[])
    if limit < 1:
        return [], found
    with closing(connect(root)) as con:
        _, rows = query(con, _APPROVED_CASES.format(exception_type=sql_string(playbook.exception_type)))
        found.approved_cases = len(rows)
        candidates: list[tuple[str, str, Example]] = []
        statuses = {status for _, status in rows}
        for case_id, status in rows:  # newest first: stop once the choice is settled
            if len(candidates) >= limit and statuses <= {s for _, s, _ in candidates}:
                break
            example = to_example(load_case_trace(root, case_id, con), playbook)
            if example is not None:
                candidates.append((case_id, status, example))
    chosen = _one_per_outcome_first(candidates, limit)
    found.case_ids = [case_id for case_id, _, _ in chosen]
    return [example for _, _, example in chosen], found


def to_example(trace: CaseTrace, playbook: Playbook) -> Example | None:
    """The case as a worked example, or None if it is not a clean run (a step denied, failed or
    not run, or an end the planner did not decide)."""
    steps = steps_of(trace)
    if not steps or not all(_clean(s) for s in steps):
        return None
    turns = [Turn(output=_as_planned(trace, s), observation=observation_message(s, playbook.observe))
             for s in steps]
    last = steps[-1].tool
    ended_by_tool = last in playbook.resolve_on or last in playbook.escalate_on
    finish = trace.planned(len(steps) + 1)
    if finish is not None and finish.get("tool") == FINISH and finish.get("status") in ("resolved", "escalated"):
        turns.append(Turn(output=finish, observation=None))
    elif not ended_by_tool:
        return None
    return Example(report=trace.report, turns=turns)


def with_approved_examples(playbooks: Mapping[str, Playbook], root: Path | str, per_class: int,
                           placement: Placement = "last") -> tuple[dict[str, Playbook], list[RetrievedExamples]]:
    """Every playbook with up to `per_class` retrieved examples before (`first`) or after (`last`,
    next to the case) its own; either way the prompt prefix stays the same for every case of the
    class, so vLLM still caches it."""
    books: dict[str, Playbook] = {}
    report: list[RetrievedExamples] = []
    for name, book in playbooks.items():
        examples, found = approved_examples(root, book, per_class)
        ordered = [*examples, *book.examples] if placement == "first" else [*book.examples, *examples]
        books[name] = book.model_copy(update={"examples": ordered}) if examples else book
        report.append(found)
        log.info("few-shot %s: %d approved case(s) in %s, %d used as examples",
                 name, found.approved_cases, root, len(examples))
    return books, report


def _as_planned(trace: CaseTrace, step: Step) -> dict:
    """The model's own output for the step (its key order is the grammar's), if it proposed
    exactly what ran; else the step restated."""
    planned = trace.planned(step.step)
    if planned is not None and planned.get("tool") == step.tool and planned.get("args") == step.args:
        return planned
    return step_turn(step)


def _clean(step: Step) -> bool:
    return step.verdict != "deny" and step.done


def _one_per_outcome_first(candidates: list[tuple[str, str, Example]],
                           limit: int) -> list[tuple[str, str, Example]]:
    """Newest first, but the newest case of each status before a second one of any status."""
    firsts: dict[str, int] = {}
    for index, (_, status, _) in enumerate(candidates):
        firsts.setdefault(status, index)
    head = sorted(firsts.values())
    order = head + [i for i in range(len(candidates)) if i not in firsts.values()]
    return [candidates[i] for i in order[:limit]]
