"""Earned autonomy: each exception class runs in a mode, stored durably, changed only by an admin.

- `shadow`: the agent plans and dry-runs, but no write is ever executed; its proposals are
  compared with what the ops team did (`evals/gates.py`).
- `supervised`: every write needs a human approval, low risk included.
- `autonomous`: low-risk writes run; high-risk writes still need approval.

A class starts in its policy's `initial_mode` (the shipped policy: shadow) and moves only through
`AutonomyStore.set_mode` by an identity with the admin role, or down through `demote` when the
gates measure its live accuracy below its gate (actor `opsagent-gates`). Every change is one row
of an append-only history: class, from, to, actor, reason, time, automatic.

Fails closed: an unreadable store, a mode it cannot parse, or a class it cannot place yields
`supervised` (every write waits for a human), never `autonomous`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Connection, Row, select
from sqlalchemy.exc import SQLAlchemyError

from opsagent.errors import AutonomyError, StateError
from opsagent.policy.identity import Identity, Role, require
from opsagent.policy.state import State, open_state
from opsagent.policy.state._schema import mode_changes as _changes

if TYPE_CHECKING:
    from opsagent.policy.config import PolicyConfig

log = logging.getLogger(__name__)

GATES_ACTOR = "opsagent-gates"
"""The actor of automatic demotions."""
POLICY_ACTOR = "opsagent-policy"
"""The actor of a class's first mode, taken from the policy's `initial_mode`."""
_CLASS = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class Mode(StrEnum):
    shadow = "shadow"
    supervised = "supervised"
    autonomous = "autonomous"

    @property
    def rank(self) -> int:
        """0 shadow, 1 supervised, 2 autonomous: more autonomy, higher rank."""
        return _ORDER.index(self)

    @property
    def next(self) -> Mode | None:
        """The stage after this one (None for autonomous)."""
        return _ORDER[self.rank + 1] if self.rank + 1 < len(_ORDER) else None

    @property
    def previous(self) -> Mode | None:
        """The stage a demotion goes to (None for shadow)."""
        return _ORDER[self.rank - 1] if self.rank > 0 else None


_ORDER = [Mode.shadow, Mode.supervised, Mode.autonomous]
FAIL_CLOSED = Mode.supervised
"""The mode of a class whose mode cannot be known: every write waits for a human."""


class ModeSource(Protocol):
    """Where a policy engine reads a class's mode: an `AutonomyStore`, or (what-if) the recorded one."""

    def mode(self, exception_type: str, initial: Mode | str | None = None) -> Mode: ...


class GateConfig(BaseModel):
    """When a class may move up a stage, and when it is moved down (see evals/gates.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cases: int = Field(200, ge=1, description="Cases with a verdict needed in the current stage "
                           "before the class can be eligible for the next one.")
    threshold: float = Field(0.85, gt=0, lt=1, description="The Wilson lower bound of the stage's "
                             "correctness must be at least this for promotion; the class is demoted when "
                             "the upper bound over its recent cases falls below it.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the Wilson score interval.")
    demote_window: int = Field(50, ge=1, description="Demotion looks at the class's most recent this many "
                               "cases with a verdict in its current stage.")
    demote_min_cases: int = Field(20, ge=1, description="No demotion before the window holds this many cases "
                                  "(one wrong verdict is not a trend).")

    @model_validator(mode="after")
    def _window_holds_minimum(self) -> Self:
        if self.demote_min_cases > self.demote_window:
            raise ValueError(f"demote_min_cases ({self.demote_min_cases}) cannot exceed demote_window "
                             f"({self.demote_window})")
        return self


class ModeChange(BaseModel, frozen=True):
    """One row of a class's mode history."""

    exception_type: str = Field(description="The exception class.")
    from_mode: Mode | None = Field(description="The mode before; None for the class's first mode.")
    to_mode: Mode = Field(description="The mode from now on.")
    actor: str = Field(description="Who changed it (from authentication), or opsagent-gates / opsagent-policy.")
    reason: str = Field(description="Why.")
    at: datetime = Field(description="When (UTC).")
    automatic: bool = Field(description="True for a demotion by the gates or the first mode from the policy.")


class ClassMode(BaseModel, frozen=True):
    """A class's mode now, where it came from, and its last change."""

    exception_type: str
    mode: Mode
    initial_mode: Mode | None = Field(description="The policy's initial mode (None: the class is not in it).")
    since: datetime | None = Field(description="When the class entered its mode (None: never recorded).")
    last_change: ModeChange | None


class AutonomyStore:
    """Modes per class as an append-only history in the state database (the current mode is a
    class's last row). Safe for threads and for processes sharing the database (the CLI next to
    the policy actor, policy replicas): a change is one transaction holding the class's lock, and
    every decision reads the mode anew.
    """

    def __init__(self, target: State | Path | str) -> None:
        self.path = target if not isinstance(target, State) else target.redacted
        self._lock = threading.RLock()
        self._db: State | None = None
        self._broken: str | None = None
        try:
            self._db = open_state(target)
        except (StateError, OSError) as err:  # fail closed: modes read as supervised
            self._broken = f"{type(err).__name__}: {err}"
            log.error("autonomy store %s is unusable (%s); every class runs supervised", self.path, err)

    def mode(self, exception_type: str, initial: Mode | str | None = None) -> Mode:
        """The class's mode now: its last recorded change, else `initial` (the policy's), else
        supervised. Never raises: a store that cannot be read yields supervised."""
        try:
            change = self.last_change(exception_type)
        except AutonomyError:
            return FAIL_CLOSED
        if change is not None:
            return change.to_mode
        try:
            return Mode(initial) if initial is not None else FAIL_CLOSED
        except ValueError:
            return FAIL_CLOSED

    def set_mode(self, exception_type: str, mode: Mode | str, *, identity: Identity, reason: str,
                 now: datetime | None = None, expected: Mode | str | None = None) -> ModeChange:
        """Set the class's mode as `identity`, who must hold the admin role (AuthError otherwise).

        Setting the mode a class is already in records nothing and returns its last change.
        `expected`: the mode the change was judged from (the gates' evidence is of that stage);
        AutonomyError if the recorded mode is another one by now (e.g. the gates demoted it).
        """
        require(identity, Role.admin)
        if identity.kind != "human":
            raise AutonomyError(f"{identity.name} is an agent identity and cannot set autonomy modes")
        change = self._append(exception_type, _mode(mode), actor=identity.name, reason=reason,
                              automatic=False, now=now, expected=_mode(expected) if expected else None)
        if change is None:
            raise AutonomyError(f"{exception_type} is no longer {expected}: its mode changed meanwhile "
                                f"({self.mode(exception_type)} now); look at its status again")
        return change

    def demote(self, exception_type: str, *, reason: str, now: datetime | None = None,
               expected: Mode | str | None = None) -> ModeChange | None:
        """Move the class one stage down (the gates' automatic demotion, actor opsagent-gates);
        None if it is already in shadow, has no recorded mode to demote from, or (`expected`: the
        mode its evidence was judged in) is in another mode by now."""
        current = self.last_change(exception_type)
        if current is None or current.to_mode.previous is None:
            return None
        want = _mode(expected) if expected else current.to_mode
        if want != current.to_mode or want.previous is None:
            return None
        return self._append(exception_type, want.previous, actor=GATES_ACTOR, reason=reason,
                            automatic=True, now=now, expected=want)

    def seed(self, config: PolicyConfig, now: datetime | None = None) -> list[ModeChange]:
        """Record the policy's `initial_mode` for every class that has no mode yet (a class's
        first appearance); classes already recorded keep theirs. Returns the rows added."""
        added = []
        for name, class_policy in config.classes.items():
            if self.last_change(name) is None:
                added.append(self._append(name, class_policy.initial_mode, actor=POLICY_ACTOR,
                                          reason=f"initial mode of policy {config.name} {config.version}",
                                          automatic=True, now=now))
        return added

    def last_change(self, exception_type: str) -> ModeChange | None:
        """The class's latest row, or None; AutonomyError if the store cannot be read."""
        rows = self._read(select(_changes).where(_changes.c.exception_type == exception_type)
                          .order_by(_changes.c.seq.desc()).limit(1))
        return rows[0] if rows else None

    def history(self, exception_type: str | None = None) -> list[ModeChange]:
        """Every change, oldest first (of one class, if given)."""
        query = select(_changes).order_by(_changes.c.seq)
        if exception_type is not None:
            query = query.where(_changes.c.exception_type == exception_type)
        return self._read(query)

    def classes(self, config: PolicyConfig | None = None) -> list[ClassMode]:
        """Each class's mode and last change: the policy's classes, then any other recorded one."""
        names = list(config.classes) if config is not None else []
        try:
            recorded = self._db.run(lambda conn: list(conn.execute(
                select(_changes.c.exception_type).distinct().order_by(_changes.c.exception_type)).scalars()),
                write=False) if self._db else []
        except (StateError, SQLAlchemyError):
            recorded = []
        out = []
        for name in [*names, *(n for n in recorded if n not in names)]:
            initial = config.classes[name].initial_mode if config is not None and name in config.classes else None
            try:
                last = self.last_change(name)
            except AutonomyError:
                last = None
            mode = self.mode(name, initial)
            if config is not None and name not in config.classes:
                mode = min(mode, FAIL_CLOSED, key=lambda m: m.rank)
            out.append(ClassMode(exception_type=name, mode=mode, initial_mode=initial,
                                 since=last.at if last else None, last_change=last))
        return out

    def close(self) -> None:
        """Nothing to release: the state's pool is shared by the process's stores."""

    def _append(self, exception_type: str, mode: Mode, *, actor: str, reason: str, automatic: bool,
                now: datetime | None, expected: Mode | None = None) -> ModeChange | None:
        """Append a change in one transaction; None (nothing recorded) if `expected` is given and
        the class's recorded mode is another one (a class never recorded matches any)."""
        if not _CLASS.match(exception_type):
            raise AutonomyError(f"{exception_type!r} is not an exception class name")
        if not (reason and reason.strip()):
            raise AutonomyError("a mode change needs a reason (it is recorded with the change)")
        at = (now or datetime.now(UTC)).astimezone(UTC)
        db = self._usable()

        def attempt(conn: Connection) -> ModeChange | None:
            db.lock(conn, f"autonomy:{exception_type}")
            row = conn.execute(select(_changes.c.to_mode).where(_changes.c.exception_type == exception_type)
                               .order_by(_changes.c.seq.desc()).limit(1)).first()
            before = Mode(row[0]) if row else None
            if expected is not None and before is not None and before != expected:
                return None
            if before == mode:
                last = conn.execute(select(_changes).where(_changes.c.exception_type == exception_type)
                                    .order_by(_changes.c.seq.desc()).limit(1)).one()
                return _change(last)
            change = ModeChange(exception_type=exception_type, from_mode=before, to_mode=mode,
                                actor=actor, reason=reason.strip(), at=at, automatic=automatic)
            conn.execute(_changes.insert().values(
                exception_type=exception_type, from_mode=before, to_mode=mode.value, actor=actor,
                reason=change.reason, at=at.isoformat(), automatic=int(automatic)))
            return change

        try:
            with self._lock:
                return db.run(attempt)
        except (StateError, SQLAlchemyError, ValueError) as err:
            raise AutonomyError(f"cannot record the mode of {exception_type} in {self.path}: {err}") from err

    def _read(self, query: Any) -> list[ModeChange]:
        db = self._usable()
        try:
            rows = db.run(lambda conn: conn.execute(query).all(), write=False)
            return [_change(r) for r in rows]
        except (StateError, SQLAlchemyError, ValueError) as err:
            raise AutonomyError(f"cannot read the autonomy modes in {self.path}: {err}") from err

    def _usable(self) -> State:
        if self._db is None or self._broken is not None:
            raise AutonomyError(f"the autonomy store {self.path} is unusable: {self._broken}")
        return self._db


def _change(row: Row) -> ModeChange:
    return ModeChange(exception_type=row.exception_type, from_mode=row.from_mode, to_mode=row.to_mode,
                      actor=row.actor, reason=row.reason, at=datetime.fromisoformat(row.at),
                      automatic=bool(row.automatic))


def promoted_store(classes: Iterable[str], *, identity: Identity, reason: str,
                   mode: Mode = Mode.autonomous) -> AutonomyStore:
    """An in-memory store with every class set to `mode` by `identity` (an admin): for a sandbox
    engine of this process only (recording worked examples, evals, tests)."""
    store = AutonomyStore(":memory:")
    for name in classes:
        store.set_mode(name, mode, identity=identity, reason=reason)
    return store


def _mode(value: Mode | str) -> Mode:
    try:
        return Mode(value)
    except ValueError:
        raise AutonomyError(f"unknown mode {value!r}; modes: {', '.join(m.value for m in Mode)}") from None
