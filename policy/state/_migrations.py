"""Schema versions: an ordered list of migrations and a version table (`opsagent_schema`).

Opening a database applies the migrations it has not had, in order, each in the transaction
that records its version, while holding the migration lock (a PostgreSQL advisory lock; SQLite's
write lock), so two processes starting at once apply each exactly once. A database whose version
is newer than this build knows is refused (a StateError): an older build must not write it.
To change the schema, append a migration; never edit one that shipped.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import Connection, func, insert, inspect, select

from opsagent.errors import StateError
from opsagent.policy.state._schema import metadata, schema_version


class State(Protocol):
    """What a migration needs of the state database (`_engine.State` is the one implementation)."""

    dialect: str
    redacted: str

    def write(self) -> AbstractContextManager[Connection]: ...

    def lock(self, conn: Connection, name: str) -> None: ...

_APPEND_ONLY_SQLITE = [
    "CREATE TRIGGER IF NOT EXISTS mode_changes_no_update BEFORE UPDATE ON mode_changes "
    "BEGIN SELECT RAISE(ABORT, 'mode history is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS mode_changes_no_delete BEFORE DELETE ON mode_changes "
    "BEGIN SELECT RAISE(ABORT, 'mode history is append-only'); END",
]
_APPEND_ONLY_POSTGRESQL = [
    "CREATE OR REPLACE FUNCTION opsagent_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'mode history is append-only'; END $$",
    "CREATE TRIGGER mode_changes_append_only BEFORE UPDATE OR DELETE ON mode_changes "
    "FOR EACH ROW EXECUTE FUNCTION opsagent_append_only()",
]


def _initial(state: State, conn: Connection) -> None:
    """Version 1: every table of `_schema.py`, and the mode history's append-only triggers."""
    metadata.create_all(conn)
    statements = _APPEND_ONLY_POSTGRESQL if state.dialect == "postgresql" else _APPEND_ONLY_SQLITE
    for statement in statements:
        conn.exec_driver_sql(statement)


MIGRATIONS: list[tuple[int, str, Callable[[State, Connection], None]]] = [
    (1, "initial schema", _initial),
]
LATEST = MIGRATIONS[-1][0]


def version(conn: Connection) -> int:
    """The database's schema version (0: no opsagent schema yet)."""
    if not inspect(conn).has_table(schema_version.name):
        return 0
    return conn.execute(select(func.coalesce(func.max(schema_version.c.version), 0))).scalar_one()


def upgrade(state: State) -> int:
    """Apply the migrations the database has not had; returns its version after."""
    with state.write() as conn:
        state.lock(conn, "opsagent-schema")
        if state.dialect == "postgresql":  # the version table itself, created once under the lock
            schema_version.create(conn, checkfirst=True)
        current = version(conn)
        found = set(table_names(conn)) & (set(metadata.tables) - {schema_version.name})
        if current == 0 and found:
            raise StateError(f"state database {state.redacted} holds opsagent tables ({', '.join(sorted(found))}) "
                             "but no schema version: a per-store file from before the state layer, which "
                             "this build does not import. Nothing was changed")
        if current > LATEST:
            raise StateError(f"state database {state.redacted} has schema version {current}; this "
                             f"build knows up to {LATEST}: upgrade opsagent before opening it")
        for number, name, apply in MIGRATIONS:
            if number > current:
                apply(state, conn)
                conn.execute(insert(schema_version).values(
                    version=number, name=name, applied_at=datetime.now(UTC).isoformat()))
        return max(current, LATEST)


def table_names(conn: Connection) -> list[str]:
    return sorted(inspect(conn).get_table_names())

