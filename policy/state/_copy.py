"""Moving a system's state to another database (`opsagent state migrate`): every store's tables
copied, then checked row by row (a count and a digest of each table on both sides).

Never against a live system: a running system's case manager holds the lease (policy/state/
_lease.py), so a live lease on either database refuses the copy; the copy then takes both leases
itself, so a system started meanwhile waits for it instead of writing half-copied state. The
target must hold no opsagent rows yet (a second run refuses rather than merging).
"""

from __future__ import annotations

import hashlib
import json
import time

from pydantic import BaseModel
from sqlalchemy import Connection, Table, func, select, text

from opsagent.errors import StateBusy, StateError
from opsagent.policy.state import _lease
from opsagent.policy.state._engine import State
from opsagent.policy.state._lease import CASE_MANAGER
from opsagent.policy.state._schema import STORES

MIGRATOR = "opsagent-state-migrate"
_CHUNK = 1000


class TableCopy(BaseModel):
    """One table on both sides after the copy."""

    store: str
    table: str
    source_rows: int
    target_rows: int
    source_digest: str
    target_digest: str

    @property
    def same(self) -> bool:
        return self.source_rows == self.target_rows and self.source_digest == self.target_digest


def _ordered(table: Table):  # noqa: ANN202 - a SQLAlchemy select
    return select(table).order_by(*table.primary_key.columns)


def digest(conn: Connection, table: Table) -> tuple[int, str]:
    """(rows, sha256 of every row as canonical JSON in primary-key order)."""
    hasher, rows = hashlib.sha256(), 0
    for row in conn.execute(_ordered(table)).mappings():
        hasher.update(json.dumps({k: _plain(v) for k, v in row.items()}, sort_keys=True).encode())
        hasher.update(b"\n")
        rows += 1
    return rows, hasher.hexdigest()


def _plain(value: object) -> object:
    return repr(float(value)) if isinstance(value, float) else value


def refuse_if_live(state: State, *, now: float | None = None) -> None:
    """StateBusy if a system (its case manager's lease) is running on `state`."""
    lease = _lease.held(state, CASE_MANAGER)
    if lease is not None and lease.owner != MIGRATOR and lease.live(now):
        raise StateBusy(f"a system is running on {state.redacted} (case manager {lease.owner}, lease "
                        f"until {time.strftime('%H:%M:%S', time.gmtime(lease.until))} UTC): stop it first, "
                        "then migrate")


def copy_state(source: State, target: State, *, lease_s: float = 600.0) -> list[TableCopy]:
    """Copy every store from `source` to the empty `target` in one target transaction, verify
    counts and digests, and return them. StateBusy against a live system, StateError if the target
    already holds rows or a table differs after the copy (then the target is left empty)."""
    if source.url == target.url:
        raise StateError(f"source and target are the same database ({source.redacted})")
    for state in (source, target):
        refuse_if_live(state)
    taken = []
    try:
        for state in (source, target):
            if _lease.take(state, CASE_MANAGER, MIGRATOR, lease_s).owner != MIGRATOR:
                raise StateBusy(f"a system started on {state.redacted} meanwhile: stop it first")
            taken.append(state)
        return _copy(source, target)
    finally:
        for state in taken:
            _lease.release(state, CASE_MANAGER, MIGRATOR)


def _copy(source: State, target: State) -> list[TableCopy]:
    tables = [(store, table) for store, group in STORES.items() for table in group]
    with target.write() as out:
        busy = [t.name for _, t in tables if out.execute(select(func.count()).select_from(t)).scalar_one()]
        if busy:
            raise StateError(f"{target.redacted} already holds opsagent state ({', '.join(busy)}): "
                             "migrate into an empty database")
        with source.read() as src:
            for _, table in tables:
                rows = src.execute(_ordered(table)).mappings()
                while chunk := rows.fetchmany(_CHUNK):
                    out.execute(table.insert(), [dict(r) for r in chunk])
            if target.dialect == "postgresql":  # the history's sequence continues after the copied rows
                out.execute(text("SELECT setval(pg_get_serial_sequence('mode_changes', 'seq'), "
                                 "coalesce((SELECT max(seq) FROM mode_changes), 0) + 1, false)"))
            copies = []
            for store, table in tables:
                (source_rows, source_digest), (target_rows, target_digest) = digest(src, table), digest(out, table)
                copies.append(TableCopy(store=store, table=table.name, source_rows=source_rows,
                                        target_rows=target_rows, source_digest=source_digest,
                                        target_digest=target_digest))
        differ = [c.table for c in copies if not c.same]
        if differ:  # raising rolls the target's transaction back: nothing half-copied stays
            raise StateError(f"the copy of {', '.join(differ)} differs from its source: nothing was kept")
    return copies
