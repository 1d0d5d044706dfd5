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
import sqlite3
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from opsagent.errors import AutonomyError
from opsagent.policy.config import PolicyConfig
from opsagent.policy.identity import Identity, Role, require
from opsagent.policy.modes import FAIL_CLOSED, ClassMode, Mode, ModeChange

log = logging.getLogger(__name__)

GATES_ACTOR = "opsagent-gates"
"""The actor of automatic demotions."""
POLICY_ACTOR = "opsagent-policy"
"""The actor of a class's first mode, taken from the policy's `initial_mode`."""
_CLASS = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS mode_changes (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, exception_type TEXT NOT NULL, from_mode TEXT,
  to_mode TEXT NOT NULL, actor TEXT NOT NULL, reason TEXT NOT NULL, at TEXT NOT NULL,
  automatic INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mode_changes_class ON mode_changes (exception_type, seq);
CREATE TRIGGER IF NOT EXISTS mode_changes_no_update BEFORE UPDATE ON mode_changes
BEGIN SELECT RAISE(ABORT, 'mode history is append-only'); END;
CREATE TRIGGER IF NOT EXISTS mode_changes_no_delete BEFORE DELETE ON mode_changes
BEGIN SELECT RAISE(ABORT, 'mode history is append-only'); END;
"""
_COLUMNS = "exception_type, from_mode, to_mode, actor, reason, at, automatic"


class AutonomyStore:
    """Modes per class as an append-only SQLite history (the current mode is a class's last row).

    Safe for the threads of one process; other processes (the CLI next to the policy actor) may
    open the same file: SQLite serialises the writes, and every decision reads the mode anew.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._broken: str | None = None
        try:
            if str(path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as err:  # fail closed: modes read as supervised
            self._broken = f"{type(err).__name__}: {err}"
            log.error("autonomy store %s is unusable (%s); every class runs supervised", path, err)

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
        rows = self._read(f"SELECT {_COLUMNS} FROM mode_changes WHERE exception_type=? "
                          "ORDER BY seq DESC LIMIT 1", (exception_type,))
        return rows[0] if rows else None

    def history(self, exception_type: str | None = None) -> list[ModeChange]:
        """Every change, oldest first (of one class, if given)."""
        if exception_type is None:
            return self._read(f"SELECT {_COLUMNS} FROM mode_changes ORDER BY seq", ())
        return self._read(f"SELECT {_COLUMNS} FROM mode_changes WHERE exception_type=? ORDER BY seq",
                          (exception_type,))

    def classes(self, config: PolicyConfig | None = None) -> list[ClassMode]:
        """Each class's mode and last change: the policy's classes, then any other recorded one."""
        names = list(config.classes) if config is not None else []
        try:
            with self._lock:
                recorded = [r[0] for r in self._db.execute(  # type: ignore[union-attr]
                    "SELECT DISTINCT exception_type FROM mode_changes ORDER BY 1")] if self._db else []
        except sqlite3.Error:
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
        if self._db is not None:
            self._db.close()

    def _append(self, exception_type: str, mode: Mode, *, actor: str, reason: str, automatic: bool,
                now: datetime | None, expected: Mode | None = None) -> ModeChange | None:
        """Append a change in one transaction; None (nothing recorded) if `expected` is given and
        the class's recorded mode is another one (a class never recorded matches any)."""
        if not _CLASS.match(exception_type):
            raise AutonomyError(f"{exception_type!r} is not an exception class name")
        if not (reason and reason.strip()):
            raise AutonomyError("a mode change needs a reason (it is recorded with the change)")
        at = (now or datetime.now(UTC)).astimezone(UTC)
        with self._lock:
            db = self._usable()
            try:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT to_mode FROM mode_changes WHERE exception_type=? "
                                 "ORDER BY seq DESC LIMIT 1", (exception_type,)).fetchone()
                before = Mode(row[0]) if row else None
                if expected is not None and before is not None and before != expected:
                    db.execute("ROLLBACK")
                    return None
                if before == mode:
                    db.execute("ROLLBACK")
                    return self.last_change(exception_type)  # type: ignore[return-value]
                change = ModeChange(exception_type=exception_type, from_mode=before, to_mode=mode,
                                    actor=actor, reason=reason.strip(), at=at, automatic=automatic)
                db.execute(f"INSERT INTO mode_changes ({_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
                           (exception_type, before, mode, actor, change.reason, at.isoformat(),
                            int(automatic)))
                db.execute("COMMIT")
            except (sqlite3.Error, ValueError) as err:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise AutonomyError(f"cannot record the mode of {exception_type} in {self.path}: {err}") from err
        return change

    def _read(self, sql: str, params: tuple) -> list[ModeChange]:
        db = self._usable()
        try:
            with self._lock:  # one connection, shared by the policy's threads (the gate watch's too)
                rows = db.execute(sql, params).fetchall()
            return [ModeChange(exception_type=r[0], from_mode=r[1], to_mode=r[2], actor=r[3], reason=r[4],
                               at=datetime.fromisoformat(r[5]), automatic=bool(r[6])) for r in rows]
        except (sqlite3.Error, ValueError) as err:
            raise AutonomyError(f"cannot read the autonomy modes in {self.path}: {err}") from err

    def _usable(self) -> sqlite3.Connection:
        if self._db is None or self._broken is not None:
            raise AutonomyError(f"the autonomy store {self.path} is unusable: {self._broken}")
        return self._db


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
