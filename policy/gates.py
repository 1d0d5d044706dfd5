"""Autonomy gates, the rule: per-class evidence, promotion eligibility, automatic demotion.

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
`check` runs it over the verdicts it is given (read from the traces by
`agents/tracing/evidence.py`); recording verdicts (`evals/verdicts.py`) runs it too, and in a running system the policy actor's
`GateWatch` runs it every `gate_check_interval_s` and shortly after each approval decision.

An admin's mode change (API and CLI alike) passes `gate_mode_change`: a demotion is always
allowed; a promotion goes one stage up, and only when the class is eligible, unless the admin
overrides the gate explicitly, which the recorded reason then says.

How a verdict is reached by comparing with a human action log: `evals/verdicts.py`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from pydantic import BaseModel, Field

from opsagent.errors import AutonomyError
from opsagent.policy.autonomy import AutonomyStore
from opsagent.policy.config import PolicyConfig
from opsagent.policy.modes import GateConfig, Mode, ModeChange
from opsagent.policy.stats import wilson

log = logging.getLogger(__name__)

SETTLE_S = 2.0
"""Seconds `GateWatch` waits after an approval decision before it checks: the trace writer
publishes its log as Parquet about every second, and the gates read only what is published."""


class CaseVerdict(BaseModel):
    """One case's verdict as evidence."""

    case_id: str
    exception_type: str
    mode: Mode
    received_at: datetime
    correct: bool
    source: str


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


def class_statuses(verdicts: list[CaseVerdict], store: AutonomyStore, config: PolicyConfig) -> list[ClassStatus]:
    """Every class of the policy: mode, evidence (from `verdicts`), eligibility and demotion due."""
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


def check(verdicts: list[CaseVerdict], store: AutonomyStore, config: PolicyConfig) -> list[ModeChange]:
    """Demote every class whose live accuracy is below its gate (one stage); returns the changes."""
    changes = []
    for status in class_statuses(verdicts, store, config):
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
    """Automatic demotion in a running system (the policy actor holds one): `check` the
    `verdicts` (a callable reading them afresh) every
    `interval_s` and once more `settle_s` after each `nudge` (an approval decided), in a thread of
    its own, so no decision waits for it.

    Best effort: a failing check (trace store unreadable, mode store broken) is logged and tried
    again at the next tick; it never reaches the caller. The gates see a case once it is finished
    and its trace is published (about a second), so the check after a decision catches a case that
    ended at once; one whose planner takes longer is caught by the next periodic check.
    """

    def __init__(self, verdicts: Callable[[], list[CaseVerdict]], store: AutonomyStore,
                 config: Callable[[], PolicyConfig], *, interval_s: float, settle_s: float = SETTLE_S) -> None:
        if interval_s <= 0 or settle_s < 0:
            raise ValueError(f"gate checks need interval_s > 0 and settle_s >= 0, got {interval_s}, {settle_s}")
        self.verdicts, self.store, self.config = verdicts, store, config
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
            changes = check(self.verdicts(), self.store, self.config())
        except Exception:  # best effort: the next tick tries again
            log.exception("autonomy gate check failed")
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
