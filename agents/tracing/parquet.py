"""The Parquet exporter: buffered records become `root/<table>/date=YYYY-MM-DD/part-<uuid>.parquet`.

Files are written under a temporary name in the same folder, synced, then published with
`os.replace` (`files.write_parquet`), so readers never see half a file. Buffered records are lost
if the process dies before `flush`: for acknowledged, crash-safe writes use `TraceWriter`.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from opsagent.agents.tracing.exporters import TraceExporter
from opsagent.agents.tracing.files import write_parquet
from opsagent.agents.tracing.records import TraceEvent
from opsagent.errors import TraceError


class ParquetExporter(TraceExporter):
    """Buffers records per table and writes one file per table and date on `flush`."""

    def __init__(self, root: Path | str, *, max_buffer: int = 500) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self.root = Path(root)
        self.max_buffer = max_buffer
        self._buffer: dict[type[TraceEvent], list[TraceEvent]] = defaultdict(list)
        self._count = 0
        self._closed = False
        self._lock = threading.RLock()

    def export(self, events: Sequence[TraceEvent]) -> None:
        """Buffer the records; flushes once `max_buffer` records are waiting."""
        with self._lock:
            if self._closed:
                raise TraceError(f"ParquetExporter({self.root}) is closed")
            for event in events:
                if not isinstance(event, TraceEvent):
                    raise TraceError(f"not a trace record: {type(event).__name__}")
                self._buffer[type(event)].append(event)
            self._count += len(events)
            if self._count >= self.max_buffer:
                self.flush()

    def flush(self) -> list[Path]:
        """Write everything buffered; returns the files written (none if the buffer was empty)."""
        with self._lock:
            written = []
            for cls in list(self._buffer):
                by_date: dict[str, list[TraceEvent]] = defaultdict(list)
                for event in self._buffer[cls]:
                    by_date[event.partition_date()].append(event)
                for date, events in sorted(by_date.items()):
                    written.append(self._write(cls, date, events))
                    # drop what is on disk now, so a later failure does not write it twice
                    done = set(map(id, events))
                    self._buffer[cls] = [e for e in self._buffer[cls] if id(e) not in done]
                    self._count -= len(events)
                del self._buffer[cls]
            return written

    def close(self) -> None:
        """Flush and refuse further records."""
        with self._lock:
            if not self._closed:
                self.flush()
                self._closed = True

    @property
    def buffered(self) -> int:
        """How many records wait for the next flush."""
        return self._count

    def _write(self, cls: type[TraceEvent], date: str, events: list[TraceEvent]) -> Path:
        path = self.root / cls.table / f"date={date}" / f"part-{uuid.uuid4().hex}.parquet"
        try:
            table = pa.Table.from_pylist([e.to_row() for e in events], schema=cls.arrow_schema())
            return write_parquet(path, table)
        except (OSError, pa.ArrowException) as err:
            raise TraceError(f"cannot write {cls.table} for {date} under {self.root}: {err}") from err
