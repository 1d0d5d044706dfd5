"""Earned autonomy: each exception class runs in a mode, stored durably, changed only by an admin.

- `shadow`: the agent plans and dry-runs, but no write is ever executed; its proposals are
  compared with what the ops team did (`policy/gates.py`).
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
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Row, select
from sqlalchemy.exc import SQLAlchemyError

from opsagent.errors import AutonomyError, StateError, StateUnavailable
from opsagent.policy.config import PolicyConfig
from opsagent.policy.identity import Identity, Role, require
from opsagent.policy.modes import FAIL_CLOSED, ClassMode, Mode, ModeChange
from opsagent.policy.state import State, open_state
from opsagent.policy.state._schema import mode_changes as _changes

log = logging.getLogger(__name__)

GATES_ACTOR = "opsagent-gates"
"""The actor of automatic demotions."""
POLICY_ACTOR = "opsagent-policy"
"""The actor of a class's first mode, taken from the policy's `initial_mode`."""
_CLASS = re.compile(r"^[a-z][a-z0-9_]{0,63}$")




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
        except StateUnavailable:  # away, not unusable: the caller waits rather than guess a mode
            raise
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
