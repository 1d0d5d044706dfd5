"""The exporter interface trace records go through; a storage backend is one exporter."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from opsagent.agents.tracing.records import TraceEvent
from opsagent.errors import TraceError

E = TypeVar("E", bound=TraceEvent)


class TraceExporter(ABC):
    """Receives trace records. `flush` makes everything exported so far durable; `close` flushes."""

    @abstractmethod
    def export(self, events: Sequence[TraceEvent]) -> None: ...

    @abstractmethod
    def flush(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class InMemoryExporter(TraceExporter):
    """Keeps every record in a list, for tests."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []
        self.flushes = 0
        self.closed = False
        self._lock = threading.Lock()

    def export(self, events: Sequence[TraceEvent]) -> None:
        with self._lock:
            if self.closed:
                raise TraceError("export after close")
            self.events.extend(events)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True

    def of_type(self, cls: type[E]) -> list[E]:
        """The exported records of one type, in order."""
        return [e for e in self.events if isinstance(e, cls)]


class FanoutExporter(TraceExporter):
    """Sends every call to several exporters; one failing does not stop the others."""

    def __init__(self, exporters: Sequence[TraceExporter]) -> None:
        self.exporters = list(exporters)

    def export(self, events: Sequence[TraceEvent]) -> None:
        self._each(lambda e: e.export(events), "export")

    def flush(self) -> None:
        self._each(lambda e: e.flush(), "flush")

    def close(self) -> None:
        self._each(lambda e: e.close(), "close")

    def _each(self, call: Callable[[TraceExporter], Any], what: str) -> None:
        errors = []
        for exporter in self.exporters:
            try:
                call(exporter)
            except Exception as err:  # noqa: BLE001 - collected and re-raised below
                errors.append(f"{type(exporter).__name__}: {err}")
        if errors:
            raise TraceError(f"{what} failed in {len(errors)} exporter(s): {'; '.join(errors)}")
