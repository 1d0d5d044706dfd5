"""Regression cases: a traced case frozen as an eval case, so a failure can never recur silently.

`opsagent evals add-case CASE_ID` copies the case's trace into one JSON file with the decisions
the agent must make at each step: by default the ones it made (the case went right: keep it
right), or corrected ones (`--outcome escalated --at 3`: by step 3 it should have handed the case
to humans; `--step 3 --tool T --args JSON`: at step 3 it should have made that call). `opsagent evals regressions DIR` replays every file through a planner against the
recorded observations (see `evals/planner_whatif.py`) and fails if any decision differs. Nothing is
executed; the file holds everything, so it outlives the trace store's retention.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from opsagent.agents.planner import Planner
from opsagent.agents.step_schema import FINISH
from opsagent.agents.tracing.replay import CaseTrace, decisions, load_case_trace
from opsagent.errors import InputError
from opsagent.evals.planner_whatif import WhatIf, what_if

Outcome = Literal["resolved", "escalated"]


class ExpectedDecision(BaseModel):
    """What the planner must decide at one step, given the recorded history before it."""

    model_config = {"extra": "forbid"}
    step: int = Field(ge=1)
    tool: str = Field(description='A tool name, or "finish".')
    args: dict[str, Any] = Field(default_factory=dict, description="The arguments (actions only).")
    key_args: list[str] | None = Field(
        None, description="Arguments that must match; None: all of them.")
    status: Outcome | None = Field(None, description="For a finish: how the case must end.")


class RegressionCase(BaseModel):
    """A traced case and the decisions its replay must reproduce."""

    model_config = {"extra": "forbid"}
    case_id: str
    exception_type: str
    added_at: datetime
    note: str = Field("", description="Why it was added: the failure it guards against.")
    trace: CaseTrace = Field(description="The case's trace, as recorded.")
    expected: list[ExpectedDecision] = Field(min_length=1)


def case_from_trace(trace: CaseTrace, *, outcome: Outcome | None = None, at: int | None = None,
                    action: ExpectedDecision | None = None, note: str = "") -> RegressionCase:
    """Freeze `trace` with its recorded decisions, or corrected ones: `outcome` alone is how the
    case must end (it must have ended by a finish); with `at`, the planner must finish with
    `outcome` at step `at` instead of what it did there and after; `action`: at its step the
    planner must propose that call instead (the replay ends there: what it would have observed
    next was never recorded)."""
    recorded = [ExpectedDecision.model_validate(d) for d in decisions(trace)]
    if action is not None:
        if outcome is not None or at is not None:
            raise InputError("give either a corrected action or --outcome/--at, not both")
        if action.tool == FINISH:
            raise InputError("a corrected finish is --outcome with --at")
        if not 1 <= action.step <= len(recorded):
            raise InputError(f"{trace.case_id} has steps 1-{len(recorded)}; step {action.step} is outside them")
        expected = [*recorded[: action.step - 1], action]
    elif at is not None:
        if outcome is None:
            raise InputError("--at needs --outcome: how should the case have ended at that step?")
        if not 1 <= at <= len(recorded) + 1:
            raise InputError(f"{trace.case_id} has steps 1-{len(recorded)}; --at {at} is outside them")
        expected = [*recorded[: at - 1], ExpectedDecision(step=at, tool=FINISH, status=outcome)]
    elif outcome is not None:
        if not recorded or recorded[-1].tool != FINISH:
            raise InputError(f"{trace.case_id} did not end with a finish ({trace.status}); "
                             "say at which step it should have ended with --at")
        expected = [*recorded[:-1], recorded[-1].model_copy(update={"status": outcome})]
    else:
        if not recorded:
            raise InputError(f"{trace.case_id} has no decisions to keep")
        expected = recorded
    return RegressionCase(case_id=trace.case_id, exception_type=trace.exception_type,
                          added_at=datetime.now(UTC), note=note, trace=trace, expected=expected)


def corrected_action(step: int | None, tool: str | None, args: str | None,
                     key_args: str | None) -> ExpectedDecision | None:
    """The `--step/--tool/--args/--key-args` of `evals add-case` as a decision (None if not given)."""
    if step is None and tool is None and args is None and key_args is None:
        return None
    if step is None or tool is None:
        raise InputError("a corrected action needs --step and --tool (and --args)")
    try:
        parsed = json.loads(args) if args else {}
    except ValueError as err:
        raise InputError(f"--args is not JSON: {err}") from err
    if not isinstance(parsed, dict):
        raise InputError("--args must be a JSON object")
    keys = [k.strip() for k in key_args.split(",") if k.strip()] if key_args else None
    try:
        return ExpectedDecision(step=step, tool=tool, args=parsed, key_args=keys)
    except ValidationError as err:
        raise InputError(f"bad corrected action: {err}") from err


def add_case(root: Path | str, case_id: str, out: Path, *, outcome: Outcome | None = None,
             at: int | None = None, action: ExpectedDecision | None = None, note: str = "",
             force: bool = False) -> Path:
    """Write `out/<case_id>.json` from the trace store at `root`; refuses to overwrite unless `force`."""
    case = case_from_trace(load_case_trace(root, case_id), outcome=outcome, at=at, action=action, note=note)
    path = out / f"{case_id}.json"
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(case.model_dump_json(indent=1) + "\n")
    tmp.replace(path)
    return path


def load_regressions(folder: Path) -> list[RegressionCase]:
    """Every `*.json` regression case in `folder`, by name; InputError names a bad file."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of regression cases")
    cases = []
    for path in sorted(folder.glob("*.json")):
        try:
            cases.append(RegressionCase.model_validate_json(path.read_text()))
        except (OSError, ValidationError) as err:
            raise InputError(f"{path} is not a regression case: {err}") from err
    return cases


async def run_regressions(cases: list[RegressionCase], planner: Planner,
                          allowed_tools: dict[str, list[str]]) -> list[WhatIf]:
    """Replay each case's expected decisions through `planner` (`allowed_tools` by class)."""
    results = []
    for case in cases:
        expected = [e.model_dump(exclude_none=True) for e in case.expected]
        results.append(await what_if(case.trace, planner, allowed_tools.get(case.exception_type, []),
                                     expected=expected))
    return results
