"""Autonomy gates: per-class evidence from the traces, promotion eligibility, automatic demotion.

Evidence is one verdict per finished case, counted for the stage (autonomy mode) the case ran in
(`actions.autonomy_mode` of its last decision) and only from when the class entered its current
mode, so a class earns each stage afresh. A case's verdict, first that applies:
1. its latest recorded verdict (`verdicts` table): the comparison of its writes and outcome with
   the human action log (`compare_human_log`, any mode) or an operator's review (`review`);
2. a `failed` case is wrong;
3. supervised mode: correct if every decided approval of its writes was granted, wrong if one
   was rejected (expired ones do not count).
A shadow case is judged only by comparison, an autonomous one only by review (or failure).

Eligibility for the next stage: at least `min_cases` verdicts and the Wilson score interval's
lower bound of their correctness at or above `threshold` (`GateConfig`, in the policy).
Demotion (autonomous -> supervised -> shadow, recorded with actor `opsagent-gates`): once the
class's most recent `demote_window` verdicts in its stage number at least `demote_min_cases` and
the Wilson *upper* bound of their correctness is below `threshold`, i.e. the class is, with the
gate's confidence, worse than its gate (a point estimate would flap on a few unlucky cases).
`check` runs it; recording verdicts runs it too, and in a running system the policy actor's
`GateWatch` runs it every `gate_check_interval_s` and shortly after each approval decision.

An admin's mode change (API and CLI alike) passes `gate_mode_change`: a demotion is always
allowed; a promotion goes one stage up, and only when the class is eligible, unless the admin
overrides the gate explicitly, which the recorded reason then says.

The comparison: the same write tools with the same key arguments (every argument but free text:
`FREE_TEXT_ARGS`; numbers to the cent), as multisets, and the same outcome (resolved or
escalated). Reads do not count (people look things up differently). A log whose outcome is
unknown (the ticket was left open) is not comparable.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from opsagent.agents.tracing.records import VerdictEvent
from opsagent.agents.tracing.views import query
from opsagent.errors import AutonomyError, InputError
from opsagent.evals.catalogue._model import HumanLog, Instance, same
from opsagent.evals.metrics import FINAL
from opsagent.evals.stats import wilson
from opsagent.policy.autonomy import AutonomyStore, GateConfig, Mode, ModeChange
from opsagent.policy.config import PolicyConfig
from opsagent.policy.identity import Identity, Role, require

log = logging.getLogger(__name__)

COMPARE_ACTOR = "opsagent-compare"
FREE_TEXT_ARGS = frozenset({"reason", "note", "resolution", "description", "comment"})
"""Arguments people word freely: not compared."""
SETTLE_S = 2.0
"""Seconds `GateWatch` waits after an approval decision before it checks: the trace writer
publishes its log as Parquet about every second, and the gates read only what is published."""


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
_EVIDENCE = f"""
WITH modes AS (
  SELECT case_id, arg_max(autonomy_mode, started_at) AS case_mode FROM actions
  WHERE autonomy_mode IS NOT NULL GROUP BY case_id),
explicit AS (
  SELECT case_id, correct, source FROM verdicts
  QUALIFY row_number() OVER (PARTITION BY case_id ORDER BY recorded_at DESC, event_id) = 1),
decided AS (
  SELECT case_id, bool_and(status = 'approved') AS correct FROM approvals
  WHERE status IN ('approved', 'rejected') GROUP BY case_id),
judged AS (
  SELECT c.case_id, c.exception_type, m.case_mode, c.received_at,
    CASE WHEN e.case_id IS NOT NULL THEN e.correct
         WHEN c.status = 'failed' THEN false
         WHEN m.case_mode = 'supervised' AND d.case_id IS NOT NULL THEN d.correct END AS correct,
    CASE WHEN e.case_id IS NOT NULL THEN e.source
         WHEN c.status = 'failed' THEN 'failed'
         WHEN m.case_mode = 'supervised' AND d.case_id IS NOT NULL THEN 'approvals' END AS source
  FROM cases c JOIN modes m USING (case_id)
  LEFT JOIN explicit e USING (case_id) LEFT JOIN decided d USING (case_id)
  WHERE c.status IN ({", ".join(f"'{s}'" for s in FINAL)}))
SELECT case_id, exception_type, case_mode, received_at, correct, source FROM judged
WHERE correct IS NOT NULL ORDER BY received_at, case_id
"""


class CaseVerdict(BaseModel):
    """One case's verdict as evidence."""

    case_id: str
    exception_type: str
    mode: Mode
    received_at: datetime
    correct: bool
    source: str


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


def case_verdicts(traces: Path | str) -> list[CaseVerdict]:
    """Every finished case that has a verdict, oldest first (see the module docstring)."""
    names, rows = query(traces, _EVIDENCE)
    return [CaseVerdict(case_id=r[0], exception_type=r[1], mode=r[2], received_at=r[3], correct=r[4],
                        source=r[5]) for r in rows]


# --- status, eligibility, demotion ------------------------------------------------------------

class Evidence(BaseModel):
    """Verdicts counted, how many correct, and their Wilson interval."""

    n: int
    correct: int
    low: float
    high: float

    @classmethod
    def of(cls, verdicts: list[CaseVerdict], confidence: float) -> Evidence:
        n, correct = len(verdicts), sum(v.correct for v in verdicts)
        low, high = wilson(correct, n, confidence)
        return cls(n=n, correct=correct, low=low, high=high)


def gate_allows(evidence: Evidence, gate: GateConfig) -> bool:
    """THE promotion rule: at least `min_cases` verdicts in the stage and the Wilson lower bound of
    their correctness at or above `threshold` (the ladder and the live gates both ask this)."""
    return evidence.n >= gate.min_cases and evidence.low >= gate.threshold


class ClassStatus(BaseModel):
    """One class: its mode, the evidence of its stage, whether it may move up, or must move down."""

    exception_type: str
    mode: Mode
    since: datetime | None = Field(description="When the class entered its mode (evidence counts from then).")
    gate: GateConfig
    evidence: Evidence = Field(description="Every verdict in the current stage since `since`.")
    recent: Evidence = Field(description="The last `demote_window` of them (live accuracy).")
    next_mode: Mode | None
    eligible: bool = Field(description="May be promoted to `next_mode` (never true for autonomous).")
    below_gate: bool = Field(description="Live accuracy is below the gate: due for demotion.")
    why: str
    last_change: ModeChange | None


def class_statuses(traces: Path | str, store: AutonomyStore, config: PolicyConfig,
                   verdicts: list[CaseVerdict] | None = None) -> list[ClassStatus]:
    """Every class of the policy: mode, evidence, eligibility and demotion due."""
    verdicts = case_verdicts(traces) if verdicts is None else verdicts
    out = []
    for mode_now in store.classes(config):
        name, gate = mode_now.exception_type, config.gates_for(mode_now.exception_type)
        if name not in config.classes:
            continue
        mine = [v for v in verdicts if v.exception_type == name and v.mode == mode_now.mode
                and (mode_now.since is None or v.received_at >= mode_now.since)]
        evidence = Evidence.of(mine, gate.confidence)
        recent = Evidence.of(mine[-gate.demote_window:], gate.confidence)
        nxt = mode_now.mode.next
        eligible = nxt is not None and gate_allows(evidence, gate)
        below = (mode_now.mode.previous is not None and recent.n >= gate.demote_min_cases
                 and recent.high < gate.threshold)
        out.append(ClassStatus(
            exception_type=name, mode=mode_now.mode, since=mode_now.since, gate=gate, evidence=evidence,
            recent=recent, next_mode=nxt, eligible=eligible, below_gate=below,
            why=_why(mode_now.mode, evidence, recent, gate, eligible, below), last_change=mode_now.last_change))
    return out


def check(traces: Path | str, store: AutonomyStore, config: PolicyConfig) -> list[ModeChange]:
    """Demote every class whose live accuracy is below its gate (one stage); returns the changes."""
    changes = []
    for status in class_statuses(traces, store, config):
        if not status.below_gate:
            continue
        r, g = status.recent, status.gate
        reason = (f"live accuracy {r.correct}/{r.n} over its last {r.n} verdicts in {status.mode}: "
                  f"Wilson {g.confidence:.0%} upper bound {r.high:.3f} < gate {g.threshold}")
        change = store.demote(status.exception_type, reason=reason, expected=status.mode)
        if change is not None:
            changes.append(change)
    return changes


def gate_mode_change(exception_type: str, current: Mode | str, target: Mode | str, *, reason: str,
                     override: bool = False, status: ClassStatus | None = None) -> str:
    """THE rule for an admin's mode change, for the API and the CLI alike: the reason to record,
    or AutonomyError saying why not, with the evidence.

    Staying or moving down (any number of stages) is always allowed. Moving up skips no stage,
    override or not. One stage up needs the class to be eligible (`status`: its gate status in
    `current`, required for a promotion); with `override` an ineligible class is promoted anyway
    and the reason recorded says the gate was overridden, and on what evidence.
    """
    try:
        current, target = Mode(current), Mode(target)
    except ValueError as err:
        raise AutonomyError(f"{err}; modes: {', '.join(m.value for m in Mode)}") from None
    if not (reason and reason.strip()):
        raise AutonomyError("a mode change needs a reason (it is recorded with the change)")
    reason = reason.strip()
    if target.rank <= current.rank:
        return reason
    if target != current.next:
        raise AutonomyError(
            f"{exception_type} is {current}: a promotion to {target} would skip {current.next}; "
            f"promote one stage at a time (each stage earns its own evidence; override skips no stage)")
    if status is None or status.exception_type != exception_type:
        raise ValueError(f"a promotion of {exception_type} is judged on its gate status: pass it")
    if status.mode != current:
        raise AutonomyError(f"{exception_type} is {status.mode} by now, not {current}; look at its status again")
    if status.eligible:
        return reason
    evidence = _evidence_text(status)
    if not override:
        raise AutonomyError(
            f"{exception_type} is {current}: the gates do not allow {target} ({status.why}; {evidence}); "
            f"promote once it is eligible, or override the gate explicitly (API: \"override\": true, "
            f"CLI: --override), which is recorded with the change")
    return f"{reason} [override of the gate: {status.why}; {evidence}]"


def _evidence_text(status: ClassStatus) -> str:
    e, g = status.evidence, status.gate
    return (f"evidence in {status.mode}: {e.correct}/{e.n} correct, Wilson {g.confidence:.0%} "
            f"[{e.low:.3f}, {e.high:.3f}]; gate: n >= {g.min_cases} and lower bound >= {g.threshold}")


class GateWatch:
    """Automatic demotion in a running system (the policy actor holds one): `check` every
    `interval_s` and once more `settle_s` after each `nudge` (an approval decided), in a thread of
    its own, so no decision waits for it.

    Best effort: a failing check (trace store unreadable, mode store broken) is logged and tried
    again at the next tick; it never reaches the caller. The gates see a case once it is finished
    and its trace is published (about a second), so the check after a decision catches a case that
    ended at once; one whose planner takes longer is caught by the next periodic check.
    """

    def __init__(self, traces: Path | str, store: AutonomyStore, config: Callable[[], PolicyConfig], *,
                 interval_s: float, settle_s: float = SETTLE_S) -> None:
        if interval_s <= 0 or settle_s < 0:
            raise ValueError(f"gate checks need interval_s > 0 and settle_s >= 0, got {interval_s}, {settle_s}")
        self.traces, self.store, self.config = traces, store, config
        self.interval_s, self.settle_s = interval_s, settle_s
        self.checks = 0
        """Checks run so far (failed ones included)."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._nudged: float | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> GateWatch:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="opsagent-gates", daemon=True)
            self._thread.start()
        return self

    def nudge(self) -> None:
        """Check `settle_s` from now (a later nudge before then does not postpone it)."""
        with self._lock:
            if self._nudged is None:
                self._nudged = time.monotonic() + self.settle_s
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def run_once(self) -> list[ModeChange]:
        """One check; the demotions it recorded (none if it failed: the failure is logged)."""
        self.checks += 1
        try:
            changes = check(self.traces, self.store, self.config())
        except Exception:  # best effort: the next tick tries again
            log.exception("autonomy gate check over %s failed", self.traces)
            return []
        for change in changes:
            log.warning("gates demoted %s: %s -> %s (%s)", change.exception_type, change.from_mode,
                        change.to_mode, change.reason)
        return changes

    def _loop(self) -> None:
        due = time.monotonic() + self.interval_s
        while not self._stop.is_set():
            with self._lock:
                wake_at = min(due, self._nudged) if self._nudged is not None else due
            self._wake.wait(max(0.0, wake_at - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            now = time.monotonic()
            with self._lock:
                nudged = self._nudged is not None and now >= self._nudged
                if nudged:
                    self._nudged = None
            if nudged or now >= due:
                self.run_once()
                due = time.monotonic() + self.interval_s


def _why(mode: Mode, evidence: Evidence, recent: Evidence, gate: GateConfig, eligible: bool,
         below: bool) -> str:
    if below:
        return f"due for demotion: recent upper bound {recent.high:.3f} < {gate.threshold}"
    if mode.next is None:
        return "autonomous (the last stage)"
    if eligible:
        return f"eligible for {mode.next}"
    if evidence.n < gate.min_cases:
        return f"needs {gate.min_cases - evidence.n} more case(s) with a verdict"
    return f"lower bound {evidence.low:.3f} < {gate.threshold}"


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
    from opsagent.agents.tracing.parquet import ParquetExporter

    if "://" in str(traces):
        raise InputError(f"verdicts are written to a local trace folder, not {traces}")
    if verdicts:
        with ParquetExporter(traces) as exporter:
            exporter.export(verdicts)
    return check(traces, store, config)


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
