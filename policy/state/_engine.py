"""The state database: an SQLAlchemy engine from the system's `state:` URL, and its transactions.

Two backends, one schema: `sqlite:///path` (one machine; the default) and `postgresql://…`
(a cluster; the psycopg 3 driver, SQLAlchemy's connection pool). A store never opens its own
connection: it asks `open_state` for the `State` of its URL (one engine, one pool per URL per
process) and runs each unit of work as one transaction:

- `write()`: a transaction that may write. On SQLite it begins `IMMEDIATE` (it holds the file's
  write lock from its first statement, so a read-check-write cannot interleave with another's);
  on PostgreSQL it is READ COMMITTED, and the store takes what it must serialise on explicitly:
  `lock()` (a transaction-scoped advisory lock) or `SELECT … FOR UPDATE` on the rows it decides.
- `read()`: a read-only transaction (one snapshot on SQLite's WAL; on PostgreSQL one statement
  at a time sees committed data).
- `run(fn)`: `fn(conn)` in a write transaction, retried on a serialization failure or deadlock
  (PostgreSQL) or a busy file (SQLite): the database chose a loser; it tries again from the start.

An unreachable or misconfigured database is a `StateError` at start-up naming the URL with its
password redacted. Later, a database that is away (connection refused or lost, the server
shutting down or starting) is a `StateUnavailable`, raised at once to the caller (a store call
never blocks its thread waiting): the caller that can wait does (the case runner), the API answers
503, nothing is half-written.
"""

from __future__ import annotations

import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import StaticPool

from opsagent.errors import StateError, StateUnavailable
from opsagent.policy.state._migrations import upgrade

T = TypeVar("T")
_RETRIES = 8
_ENGINES: dict[str, State] = {}
_ENGINES_LOCK = threading.Lock()


def redact(url: str | URL) -> str:
    """The URL as it may be shown: its password replaced by ***."""
    try:
        return make_url(str(url)).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable state URL>"


STATE_FILE = "state.sqlite"


def state_db(folder: str | Path) -> str:
    """The default state URL of a state folder: one SQLite file in it (one machine)."""
    return f"sqlite:///{Path(folder).expanduser().resolve() / STATE_FILE}"


def state_of(folder_or_url: str | Path) -> str:
    """A command line's `--state`: a state URL as it is, a folder as its default SQLite file."""
    text_ = str(folder_or_url)
    return text_ if "://" in text_ else state_db(text_)


def state_url(target: str | Path) -> str:
    """A state URL from a URL, a path (an SQLite file there) or `env:NAME` (the URL in that
    environment variable of this process: a secret never travels in actors' arguments)."""
    text_ = str(target)
    if text_.startswith("env:"):
        value = os.environ.get(text_[4:])
        if not value:
            raise StateError(f"state: {text_}, but the environment variable {text_[4:]} is not set")
        return value
    if "://" in text_:
        return text_
    if text_ == ":memory:":
        return "sqlite://"
    return f"sqlite:///{Path(text_).expanduser().resolve()}"


class State:
    """One state database: its engine (pool) and transaction helpers. Safe to share by threads."""

    def __init__(self, url: str, *, check: bool = True) -> None:
        try:
            self.url = make_url(url)
        except ArgumentError as exc:
            raise StateError(f"state URL {redact(url)!r} is not a database URL: {exc}") from None
        self.redacted = redact(self.url)
        backend = self.url.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise StateError(f"state URL {self.redacted}: only sqlite:/// and postgresql:// are supported")
        self.dialect = backend
        self._memory_lock: threading.RLock | None = None
        try:
            self.engine = self._engine()
        except (ArgumentError, NoSuchModuleError, ImportError, OSError) as exc:
            raise StateError(f"state URL {self.redacted}: {exc}") from None
        if check:
            try:
                with self.engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            except DBAPIError as exc:
                raise StateError(f"cannot open the state database {self.redacted}: "
                                 f"{_reason(exc)}") from None
            upgrade(self)

    def _engine(self) -> Engine:
        if self.dialect == "postgresql":
            url = self.url.set(drivername="postgresql+psycopg")
            return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10,
                                 connect_args=pg_connect_args(url.query))
        database = self.url.database
        if not database or database == ":memory:":
            self._memory_lock = threading.RLock()  # one shared connection: one transaction at a time
            engine = create_engine("sqlite://", poolclass=StaticPool,
                                   connect_args={"check_same_thread": False})
        else:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(self.url, connect_args={"check_same_thread": False, "timeout": 30})
        memory = self._memory_lock is not None

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # SQLAlchemy's events emit BEGIN, not the driver
            if not memory:
                dbapi_conn.execute("PRAGMA journal_mode=WAL")
                dbapi_conn.execute("PRAGMA synchronous=FULL")  # a returned commit survives a crash
            dbapi_conn.execute("PRAGMA busy_timeout=30000")

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("opsagent_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One transaction that may write; committed when the block ends, rolled back on error."""
        with self._reachable(), self._guard(), self.engine.connect() as conn:
            conn.execution_options(opsagent_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """One read-only transaction."""
        with self._reachable(), self._guard(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        """A database that is away (see `_away`) as StateUnavailable naming it."""
        try:
            yield
        except DBAPIError as exc:
            if self.dialect == "postgresql" and _away(exc):
                raise StateUnavailable(f"state database {self.redacted} is unavailable: "
                                       f"{_reason(exc)}") from exc
            raise

    def run(self, fn: Callable[[Connection], T], *, write: bool = True) -> T:
        """`fn(conn)` in one transaction, retried from the start when the database picks it as
        the loser of a conflict; a database that is away is StateUnavailable (not retried here:
        the caller decides whether to wait), another failure a StateError naming the database."""
        for attempt in range(_RETRIES):
            try:
                with self.write() if write else self.read() as conn:
                    return fn(conn)
            except OperationalError as exc:
                if attempt + 1 < _RETRIES and _retryable(exc):
                    time.sleep(random.uniform(0, 0.02 * 2 ** attempt))
                    continue
                raise StateError(f"state database {self.redacted}: {_reason(exc)}") from exc
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise StateError(f"state database {self.redacted}: connection lost "
                                     f"({_reason(exc)})") from exc
                raise
        raise AssertionError("unreachable")

    def lock(self, conn: Connection, name: str) -> None:
        """Serialise this transaction with every other one taking `name`, until it ends.

        PostgreSQL: a transaction-scoped advisory lock. SQLite: nothing to do, a write transaction
        already holds the database's one write lock."""
        if self.dialect == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                         {"key": zlib.crc32(name.encode()) - 2 ** 31})

    def insert(self, table: Table) -> Any:
        """The dialect's INSERT (it has `on_conflict_do_nothing` / `on_conflict_do_update`)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        if self._memory_lock is None:
            yield
        else:
            with self._memory_lock:
                yield

    def close(self) -> None:
        self.engine.dispose()


PG_CONNECT: dict[str, Any] = {
    "connect_timeout": 10,  # s: a connect to a host that does not answer
    # the client notices a server cut off: keepalive probes on an idle connection, and data sent
    # but unacknowledged for 30 s, end the connection (an error, not a wait of the OS's 2 hours)
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # ms
}
PG_SESSION: dict[str, str] = {
    "lock_timeout": "30s",  # a lock held by a stuck or cut-off session is not waited for forever
    "statement_timeout": "5min",  # nor a runaway statement
    "idle_in_transaction_session_timeout": "5min",  # a client stuck inside a transaction loses it
    # the server notices a client cut off and ends its session (its transaction and locks with it)
    "tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3",
}
"""Every PostgreSQL connection's bounds, so no call waits without end on a database cut off by a
partition or on a lock its holder never releases: the call fails as StateUnavailable and its
caller waits the outage out (the case runner), answers 503 (the API) or tries again. A key given
in the state URL's query (`?keepalives_idle=30`, `?options=-c lock_timeout=5s`) wins."""


def pg_connect_args(query: Mapping[str, Any]) -> dict[str, Any]:
    """psycopg connect arguments: `PG_CONNECT` and `PG_SESSION` (as `options`), except what the
    URL's own query sets (its `options` come after ours, so theirs win)."""
    args = {k: v for k, v in PG_CONNECT.items() if k not in query}
    ours = " ".join(f"-c {k}={v}" for k, v in PG_SESSION.items())
    theirs = query.get("options")
    args["options"] = ours if not theirs else f"{ours} {theirs if isinstance(theirs, str) else ' '.join(theirs)}"
    return args


def open_state(target: State | str | Path, *, shared: bool = True) -> State:
    """The `State` of a URL or SQLite path (one per URL per process, created and migrated on
    first use); a `State` is returned as it is. An in-memory database is never shared."""
    if isinstance(target, State):
        return target
    url = state_url(target)
    if url == "sqlite://" or not shared:
        return State(url)
    with _ENGINES_LOCK:
        state = _ENGINES.get(url)
        if state is None:
            state = _ENGINES[url] = State(url)
        return state


def forget_states() -> None:
    """Dispose of every shared engine (tests that stop a database server call this)."""
    with _ENGINES_LOCK:
        for state in _ENGINES.values():
            state.close()
        _ENGINES.clear()


def _retryable(exc: OperationalError) -> bool:
    code = getattr(exc.orig, "sqlstate", None)
    if code in ("40001", "40P01"):  # serialization_failure, deadlock_detected
        return True
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message


# shutdown (admin, crash), starting up, too many clients; a lock or statement timeout, a session
# ended idle in its transaction (PG_SESSION's bounds: the database did not answer in time)
_AWAY = ("57P01", "57P02", "57P03", "53300", "55P03", "57014", "25P03")
_AWAY_AT_CONNECT = ("the database system is", "too many clients")  # starting up, shutting down, in recovery


def _away(exc: DBAPIError) -> bool:
    """PostgreSQL is out of reach, not misconfigured: the connection was lost (SQLAlchemy's
    disconnect detection, SQLSTATE class 08), the server is shutting down, starting up or full,
    or a connect failed without the server refusing this client (psycopg gives a failed connect
    no SQLSTATE: a refusal is the server's FATAL, e.g. an unknown database or a wrong password)."""
    code = getattr(exc.orig, "sqlstate", None)
    if exc.connection_invalidated or (code or "").startswith("08") or code in _AWAY:
        return True
    if code is not None or not isinstance(exc, OperationalError):
        return False
    message = str(exc.orig)
    return "FATAL:" not in message or any(m in message for m in _AWAY_AT_CONNECT)


def _reason(exc: DBAPIError) -> str:
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
