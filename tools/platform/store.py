"""Shared plumbing of the sandbox systems of record: SQLite, idempotency ledger, dry-run diffs.

Every write endpoint goes through `perform_write`: it runs the change in one `BEGIN IMMEDIATE`
transaction, replays a stored response when the `Idempotency-Key` was seen with the same
request, rejects a reused key with a different request, and for `?dry_run=true` rolls the
change back and answers with the before/after diff instead.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

_LEDGER = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    response TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""


def utc_now() -> str:
    """The current UTC time as an ISO 8601 string (seconds precision)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Database:
    """One SQLite file; a fresh connection per request, so it is safe across threads."""

    def __init__(self, path: Path, schema: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.read() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(schema + _LEDGER)

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads, closed afterwards."""
        conn = self.connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def tables(self) -> list[str]:
        with self.read() as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
            return [r["name"] for r in rows if not r["name"].startswith("sqlite_")]

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every row of every table, in a stable order (for scoring end states)."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self.read() as conn:
            for table in self.tables():
                rows = conn.execute(f'SELECT * FROM "{table}" ORDER BY 1')
                out[table] = [dict(r) for r in rows]
        return out

    def upsert(self, table: str, key: str, rows: list[dict[str, Any]]) -> int:
        """Insert or update rows by primary key, `key` being one column or several separated by
        commas (HTTP 422 if a constraint fails)."""
        if not rows:
            return 0
        cols = list(rows[0])
        keys = {k.strip() for k in key.split(",")}
        sets = ", ".join(f"{c}=excluded.{c}" for c in cols if c not in keys)
        sql = (f'INSERT INTO "{table}" ({", ".join(cols)}) VALUES ({", ".join(":" + c for c in cols)}) '
               f"ON CONFLICT({key}) DO UPDATE SET {sets}")
        try:
            with self.transaction() as conn:
                conn.executemany(sql, rows)
        except sqlite3.IntegrityError as exc:
            raise HTTPException(422, f"cannot upsert into {table}: {exc}") from exc
        return len(rows)

    def digest(self) -> dict[str, Any]:
        """A sha256 over the snapshot plus the row count of each table."""
        snap = self.snapshot()
        blob = json.dumps(snap, sort_keys=True, default=str).encode()
        return {
            "digest": hashlib.sha256(blob).hexdigest(),
            "counts": {t: len(rows) for t, rows in snap.items()},
        }


def admin_router(db: Database) -> APIRouter:
    """`/_admin/snapshot` and `/_admin/digest`, hidden from the OpenAPI document."""
    router = APIRouter(prefix="/_admin", include_in_schema=False)
    router.add_api_route("/snapshot", db.snapshot, methods=["GET"])
    router.add_api_route("/digest", db.digest, methods=["GET"])
    return router


def add_admin_upsert(app: FastAPI, db: Database, name: str, model: type[BaseModel], *, key: str,
                     table: str | None = None,
                     prepare: Callable[[BaseModel], dict[str, Any]] | None = None) -> None:
    """`POST /_admin/<name>`: upsert a list of `model` records into `table` (default `name`),
    hidden from the OpenAPI document. `prepare` turns a record into its row (default: all fields)."""

    def upsert(rows: list) -> dict:
        data = [prepare(r) if prepare else r.model_dump() for r in rows]
        return {"upserted": db.upsert(table or name.replace("-", "_"), key, data)}

    upsert.__annotations__ = {"rows": list[model], "return": dict}  # FastAPI reads the body type here
    app.add_api_route(f"/_admin/{name}", upsert, methods=["POST"], include_in_schema=False,
                      name=f"admin_upsert_{name}")


def row(conn: sqlite3.Connection, sql: str, *params: Any) -> dict[str, Any] | None:
    """The first row of a query as a dict, or None."""
    found = conn.execute(sql, params).fetchone()
    return dict(found) if found is not None else None


def next_id(conn: sqlite3.Connection, table: str, prefix: str) -> str:
    """The next sequential id like `WD-000042` (call inside a write transaction)."""
    count = conn.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
    return f"{prefix}-{count + 1:06d}"


@dataclass(frozen=True)
class WriteOptions:
    """The control inputs every write endpoint accepts."""

    idempotency_key: str | None
    dry_run: bool


def write_options(
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            description="Replaying a key with the same request returns the stored response.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, Query(description="Validate and return the before/after diff without changing anything.")
    ] = False,
) -> WriteOptions:
    """FastAPI dependency collecting the Idempotency-Key header and the dry_run query flag."""
    return WriteOptions(idempotency_key=idempotency_key, dry_run=dry_run)


@dataclass
class Change:
    """What a write did (or would do): the response and the touched record before/after."""

    body: dict[str, Any]
    before: Any
    after: Any
    status_code: int = 200


def perform_write(
    db: Database,
    *,
    operation: str,
    request: dict[str, Any],
    options: WriteOptions,
    apply: Callable[[sqlite3.Connection], Change],
) -> JSONResponse:
    """Run `apply` once under the idempotency and dry-run rules (see the module docstring)."""
    fingerprint = hashlib.sha256(
        json.dumps({"operation": operation, "request": request}, sort_keys=True).encode()
    ).hexdigest()
    key = None if options.dry_run else options.idempotency_key
    with db.transaction() as conn:
        if key is not None:
            seen = row(conn, "SELECT * FROM idempotency_keys WHERE key = ?", key)
            if seen is not None:
                if seen["fingerprint"] != fingerprint:
                    raise HTTPException(
                        status_code=422,
                        detail=f"Idempotency-Key {key!r} was already used with a different "
                        f"request ({seen['operation']}); use a new key for a new request.",
                    )
                return JSONResponse(
                    status_code=seen["status_code"],
                    content=json.loads(seen["response"]),
                    headers={"Idempotent-Replayed": "true"},
                )
        change = apply(conn)
        if options.dry_run:
            conn.execute("ROLLBACK")
            conn.execute("BEGIN")  # the context manager commits an empty transaction
            diff = {"before": change.before, "after": change.after}
            return JSONResponse(status_code=200, content={"dry_run": True, "diff": diff})
        if key is not None:
            conn.execute(
                "INSERT INTO idempotency_keys VALUES (?, ?, ?, ?, ?, ?)",
                (key, operation, fingerprint, change.status_code, json.dumps(change.body), utc_now()),
            )
    return JSONResponse(status_code=change.status_code, content=change.body)


def row_or_404(conn: sqlite3.Connection, kind: str, key: str, sql: str, *params: Any) -> dict[str, Any]:
    """The row `sql` finds, or a 404 saying which `kind` of record `key` names is unknown."""
    found = row(conn, sql, *params)
    if found is None:
        raise not_found(kind, key)
    return found


def not_found(kind: str, key: str) -> HTTPException:
    """A 404 with a clear detail."""
    return HTTPException(status_code=404, detail=f"{kind} {key!r} not found")


def conflict(detail: str) -> HTTPException:
    """A 409: the record is not in a state that allows this change."""
    return HTTPException(status_code=409, detail=detail)


def insert(conn: sqlite3.Connection, table: str, record: dict[str, Any]) -> None:
    """Insert one row whose keys are the table's columns."""
    cols = list(record)
    conn.execute(f'INSERT INTO "{table}" ({", ".join(cols)}) VALUES ({", ".join(":" + c for c in cols)})',
                 record)
