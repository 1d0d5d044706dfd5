"""One DuckDB connection over a trace root, kept for a process and refreshed when files change.

A reader that answers many requests (an API replica whose console pages poll every few seconds)
should not connect per request: connecting runs the views script, and over an object-store root
reads every file. `LiveViews` keeps one connection and, before each read, lists the store's
published files (a directory listing, or one LIST per table on S3); when that listing differs from
the one the views were made over, the views are made again (`views.create_views`). Reads are
serialised on the connection (DuckDB's variables, which the views use, belong to a connection).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from opsagent.agents.tracing.records import RECORD_TYPES
from opsagent.agents.tracing.storage import TraceStore, open_store
from opsagent.agents.tracing.views import connect, create_views

T = TypeVar("T")


class LiveViews:
    """The trace views over `root` on one connection; `run(read)` calls `read(connection)`."""

    def __init__(self, root: Path | str) -> None:
        self.root = root
        self._store: TraceStore = open_store(root)
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._listing: tuple[str, ...] | None = None
        self.refreshes = 0
        """How many times the views were (re)made: the first connection counts as one."""

    def run(self, read: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """`read(connection)` on the views, made again first if published files changed."""
        with self._lock:
            listing = self._published()
            if self._con is None:
                self._con = connect(self.root)
                self.refreshes += 1
            elif listing != self._listing:
                create_views(self._con, self.root)
                self.refreshes += 1
            self._listing = listing
            return read(self._con)

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple]:
        """The rows of one query."""
        return self.run(lambda con: con.execute(sql, params or {}).fetchall())

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
            self._con, self._listing = None, None

    def _published(self) -> tuple[str, ...]:
        """Every published file's path and size, over every table."""
        try:
            return tuple(f"{f.path}:{f.size}" for cls in RECORD_TYPES for f in self._store.data_files(cls.table))
        except FileNotFoundError:  # no folder yet: nothing published
            return ()
