"""Verdicts for the autonomy gates: a case compared with what the ops team did (a human action
log), or an operator's review; recorded in the trace folder, then the gates' demotion check runs.

The comparison: the same write tools with the same key arguments (every argument but free text:
`FREE_TEXT_ARGS`; numbers to the cent), as multisets, and the same outcome (resolved or
escalated). Reads do not count (people look things up differently). A log whose outcome is
unknown (the ticket was left open) is not comparable. The rule the verdicts feed:
`policy/gates.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from opsagent.agents.tracing.evidence import FINAL, case_verdicts
from opsagent.agents.tracing.parquet import ParquetExporter
from opsagent.agents.tracing.records import VerdictEvent
from opsagent.agents.tracing.views import query
from opsagent.errors import InputError
from opsagent.evals.catalogue._model import HumanLog, Instance, same
from opsagent.policy.autonomy import AutonomyStore
from opsagent.policy.config import PolicyConfig
from opsagent.policy.gates import check
from opsagent.policy.identity import Identity, Role, require
from opsagent.policy.modes import Mode, ModeChange

COMPARE_ACTOR = "opsagent-compare"
FREE_TEXT_ARGS = frozenset({"reason", "note", "resolution", "description", "comment"})
"""Arguments people word freely: not compared."""


# --- the comparator ---------------------------------------------------------------------------

class Write(BaseModel, frozen=True):
    """A write as compared: the tool and its key arguments."""

    tool: str
    args: dict[str, Any]

    @classmethod
    def of(cls, tool: str, args: Mapping[str, Any]) -> Write:
        return cls(tool=tool, args={k: v for k, v in args.items() if k not in FREE_TEXT_ARGS})

    def matches(self, other: Write) -> bool:
        return self.tool == other.tool and self.args.keys() == other.args.keys() and all(
            same(v, other.args[k]) for k, v in self.args.items())

    def label(self) -> str:
        return f"{self.tool}({', '.join(f'{k}={v!r}' for k, v in sorted(self.args.items()))})"


class Comparison(BaseModel):
    """The agent's writes and outcome against the human log's, and the first difference."""

    agree: bool
    reason: str
    agent_writes: list[Write]
    human_writes: list[Write]
    agent_outcome: str | None
    human_outcome: str | None


def compare(agent_writes: Iterable[Write], agent_outcome: str | None, human: HumanLog,
            writes: Mapping[str, bool]) -> Comparison | None:
    """Compare one case with what ops did; None when the log's outcome is unknown.

    `writes`: tool -> whether it writes; a tool it does not name counts as a write (a human action
    nobody can place is a difference, never silently ignored)."""
    if human.outcome is None:
        return None
    agent = list(agent_writes)
    theirs = [Write.of(a.tool, a.args) for a in human.actions if writes.get(a.tool, True)]
    unmatched = list(theirs)
    extra = []
    for write in agent:
        hit = next((i for i, h in enumerate(unmatched) if write.matches(h)), None)
        if hit is None:
            extra.append(write)
        else:
            unmatched.pop(hit)
    problems = []
    if extra:
        problems.append(f"the agent wrote {', '.join(w.label() for w in extra)}, ops did not")
    if unmatched:
        problems.append(f"ops wrote {', '.join(w.label() for w in unmatched)}, the agent did not")
    if agent_outcome != human.outcome:
        problems.append(f"outcome {agent_outcome} vs ops' {human.outcome}")
    return Comparison(agree=not problems, reason="; ".join(problems) or "same writes and outcome",
                      agent_writes=agent, human_writes=theirs, agent_outcome=agent_outcome,
                      human_outcome=human.outcome)


# --- reading the traces -----------------------------------------------------------------------

_CASES = """
WITH modes AS (
  SELECT case_id, arg_max(autonomy_mode, started_at) AS case_mode FROM actions
  WHERE autonomy_mode IS NOT NULL GROUP BY case_id)
SELECT c.case_id, c.exception_type, c.status, c.entities, c.outcome, c.received_at, m.case_mode
FROM cases c LEFT JOIN modes m USING (case_id)
"""
_WRITES = """
SELECT case_id, step, tool, args FROM actions
WHERE writes AND error IS NULL AND (decision = 'propose' OR (executed AND NOT dry_run))
QUALIFY row_number() OVER (PARTITION BY case_id, step ORDER BY started_at DESC) = 1
ORDER BY case_id, step
"""


class TracedCase(BaseModel):
    case_id: str
    exception_type: str
    status: str
    entities: dict[str, str]
    outcome: str | None = Field(description="resolved / escalated / failed, or the proposed outcome.")
    received_at: datetime
    mode: Mode | None
    writes: list[Write]


def traced_cases(traces: Path | str) -> dict[str, TracedCase]:
    """Every traced case with its latest status, mode and the writes it made or proposed."""
    names, rows = query(traces, _CASES)
    wnames, wrows = query(traces, _WRITES)
    writes: dict[str, list[Write]] = {}
    for values in wrows:
        row = dict(zip(wnames, values, strict=True))
        writes.setdefault(row["case_id"], []).append(Write.of(row["tool"], _json(row["args"]) or {}))
    out = {}
    for values in rows:
        row = dict(zip(names, values, strict=True))
        outcome = row["outcome"] if row["status"] == "proposed" else row["status"]
        out[row["case_id"]] = TracedCase(
            case_id=row["case_id"], exception_type=row["exception_type"], status=row["status"],
            entities=_json(row["entities"]) or {}, outcome=outcome, received_at=row["received_at"],
            mode=row["case_mode"], writes=writes.get(row["case_id"], []))
    return out


# --- recording verdicts -----------------------------------------------------------------------

class CompareReport(BaseModel):
    """What `compare_human_log` matched and recorded."""

    verdicts: list[VerdictEvent]
    unmatched: list[str] = Field(description="Log lines (instance ids) with no finished traced case, or no log.")
    incomparable: list[str] = Field(description="Cases whose log has no outcome (ticket left open).")


def compare_human_log(traces: Path | str, human_log: Path, instances: Path | None = None, *,
                      writes: Mapping[str, bool] | None = None) -> CompareReport:
    """Match each line of a human action log to the finished traced cases of the same exception
    (class and entities) and compare them (verdicts are returned, not yet recorded).

    A line is `{"instance_id", "actor", "outcome", "actions": [{tool, args, at}], ...}` as an eval
    set's `human_log.jsonl` has them; its class and entities come from the line itself
    (`exception_type`, `entities`) or from `instances` (default: `instances.jsonl` next to the log).
    """
    lines = _read_jsonl(human_log)
    known = _instances(instances if instances is not None else human_log.with_name("instances.jsonl"))
    cases = traced_cases(traces)
    tools = dict(query(traces, "SELECT DISTINCT tool, writes FROM actions")[1])
    tools.update(writes or {})
    for inst in known.values():
        for action in inst.gold.actions:
            tools.setdefault(action.tool, action.writes)
    by_exception: dict[tuple[str, str], list[TracedCase]] = {}
    for case in cases.values():
        if case.status in FINAL:
            by_exception.setdefault((case.exception_type, _key(case.entities)), []).append(case)
    verdicts, unmatched, incomparable = [], [], []
    now = datetime.now(UTC)
    for number, line in enumerate(lines, 1):
        label = str(line.get("instance_id") or f"line {number}")
        exception_type, entities = _exception_of(line, known, human_log, number)
        matched = by_exception.get((exception_type, _key(entities)), [])
        if not matched or "actor" not in line:  # no finished case, or no log for the instance
            unmatched.append(label)
            continue
        try:
            log = HumanLog.model_validate({k: v for k, v in line.items()
                                           if k not in ("instance_id", "exception_type", "entities")})
        except ValidationError as err:
            raise InputError(f"{human_log}:{number}: not a human action log: {err}") from err
        for case in matched:
            result = compare(case.writes, case.outcome, log, tools)
            if result is None:
                incomparable.append(case.case_id)
                continue
            verdicts.append(VerdictEvent(
                case_id=case.case_id, exception_type=case.exception_type, autonomy_mode=case.mode,
                source="human_log", correct=result.agree, reason=result.reason, actor=COMPARE_ACTOR,
                details={"instance_id": line.get("instance_id"), "human_actor": log.actor,
                         **result.model_dump(mode="json", exclude={"agree", "reason"})},
                case_received_at=case.received_at, recorded_at=now))
    return CompareReport(verdicts=verdicts, unmatched=unmatched, incomparable=incomparable)


def review(traces: Path | str, case_id: str, *, correct: bool, reason: str, identity: Identity) -> VerdictEvent:
    """An operator's verdict on one finished case (approver or admin role; AuthError otherwise)."""
    require(identity, Role.approver)
    if not (reason and reason.strip()):
        raise InputError("a review needs a reason")
    case = traced_cases(traces).get(case_id)
    if case is None:
        raise InputError(f"no traced case {case_id!r} in {traces}")
    if case.status not in FINAL:
        raise InputError(f"case {case_id} is {case.status}; only a finished case can be reviewed")
    return VerdictEvent(case_id=case_id, exception_type=case.exception_type, autonomy_mode=case.mode,
                        source="review", correct=correct, reason=reason.strip(), actor=identity.name,
                        details={"status": case.status, "outcome": case.outcome,
                                 "writes": [w.model_dump() for w in case.writes]},
                        case_received_at=case.received_at)


def record_verdicts(traces: Path | str, verdicts: list[VerdictEvent], store: AutonomyStore,
                    config: PolicyConfig) -> list[ModeChange]:
    """Write the verdicts to the trace folder, then run the demotion check; returns demotions."""
    if "://" in str(traces):
        raise InputError(f"verdicts are written to a local trace folder, not {traces}")
    if verdicts:
        with ParquetExporter(traces) as exporter:
            exporter.export(verdicts)
    return check(case_verdicts(traces), store, config)


def _exception_of(line: dict, known: dict[str, Instance], path: Path, number: int) -> tuple[str, dict]:
    if "exception_type" in line and "entities" in line:
        return line["exception_type"], line["entities"]
    inst = known.get(line.get("instance_id", ""))
    if inst is None:
        raise InputError(f"{path}:{number}: no exception_type/entities and no instance "
                         f"{line.get('instance_id')!r} in the instances file")
    return inst.exception_type, inst.entities


def _instances(path: Path) -> dict[str, Instance]:
    if not path.exists():
        return {}
    return {i.instance_id: i for i in (Instance.model_validate(d) for d in _read_jsonl(path))}


def _read_jsonl(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err}") from err
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not JSON: {err}") from err
        if not isinstance(data, dict):
            raise InputError(f"{path}:{number}: expected an object, got {type(data).__name__}")
        out.append(data)
    return out


def _key(entities: Mapping[str, str]) -> str:
    return json.dumps(dict(entities), sort_keys=True)


def _json(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) else text
