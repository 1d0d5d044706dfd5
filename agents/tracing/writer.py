"""The durable trace writer: acknowledged through a write-ahead log, published to Parquet exactly once.

`export` returns once the records are in the local write-ahead log and fsynced: that is the
acknowledgement. `flush` seals the log's active segment and publishes every sealed segment as
`root/<table>/date=YYYY-MM-DD/part-<writer>-<segment>.parquet` (atomically: in a local folder a
temporary file, fsync, rename; in an S3 bucket one upload), then removes the segment; then it
compacts partitions with many small files.
A segment's files have names fixed by the segment, so publishing it again after a crash replaces
them with the same rows: every acknowledged record lands in the dataset exactly once.
On start-up (`recover`) the writer finishes or rolls back interrupted compactions, removes its
temporary files and publishes every segment left in the log.

Thread-safe: concurrent `export`s share fsyncs; `flush` may run beside them.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from pydantic import ValidationError

from opsagent.agents.tracing import compaction
from opsagent.agents.tracing.exporters import TraceExporter
from opsagent.agents.tracing.records import RECORD_TYPES, TraceEvent
from opsagent.agents.tracing.storage import TraceStore, is_remote, open_store
from opsagent.agents.tracing.wal import WriteAheadLog
from opsagent.errors import TraceError

log = logging.getLogger(__name__)

_BY_TABLE = {cls.table: cls for cls in RECORD_TYPES}


@dataclass
class Recovery:
    """What `recover` found: segments published, merges finished or rolled back, ..."""

    segments: int = 0
    events: int = 0
    compactions: int = 0
    temp_files: int = 0
    quarantined: list[str] = field(default_factory=list)


class TraceWriter(TraceExporter):
    """Durable trace writer over a trace root and a local write-ahead log `wal_dir`.

    `root` is a local folder or an S3 URI (`s3://bucket/prefix`, see `storage.open_store`).
    `wal_dir` defaults to `root/_wal` for a local root and is required for an S3 root (the log,
    the writer's state and its compaction intents stay on the node). Give each node's writer a
    local `wal_dir` of its own when `root` is shared (each log has its own writer id; file names
    never collide).
    Compaction merges this writer's files in a partition once there are `compact_min_files` of
    them smaller than `compact_max_bytes`. `sync=False` skips fsync (tests and benchmarks only).
    """

    def __init__(self, root: Path | str, wal_dir: Path | str | None = None, *, compact_min_files: int = 16,
                 compact_max_bytes: int = 32 << 20, sync: bool = True, recover: bool = True) -> None:
        if compact_min_files < 2:
            raise ValueError("compact_min_files must be at least 2")
        if wal_dir is None and is_remote(root):
            raise TraceError(f"trace root {root.split('?')[0]} is not a local folder: give the writer a "
                             "local wal_dir for its write-ahead log")
        self.store: TraceStore = open_store(root)
        self.root = self.store.uri
        self.wal = WriteAheadLog(Path(wal_dir) if wal_dir is not None else Path(self.root) / "_wal", sync=sync)
        self.writer_id = self.wal.writer_id
        self.compact_min_files = compact_min_files
        self.compact_max_bytes = compact_max_bytes
        self._publish_lock = threading.Lock()
        self._closed = False
        if recover:
            try:
                self.recover()
            except BaseException:
                self.wal.close()
                raise

    def export(self, events: Sequence[TraceEvent]) -> None:
        """Append the records to the write-ahead log; returns once they are on disk."""
        payloads = []
        for event in events:
            if not isinstance(event, TraceEvent):
                raise TraceError(f"not a trace record: {type(event).__name__}")
            payloads.append(encode(event))
        try:
            self.wal.append(payloads)
        except OSError as err:
            raise TraceError(f"cannot append to the write-ahead log in {self.wal.folder}: {err}") from err

    def flush(self) -> list[str]:
        """Publish everything acknowledged so far, then compact; returns the locations published
        (absolute paths, or s3:// URIs)."""
        with self._publish_lock:
            self._check_open()
            self.wal.seal()
            return self._publish_sealed()

    def recover(self) -> Recovery:
        """Finish what a crash interrupted and publish every segment left in the log."""
        with self._publish_lock:
            self._check_open()
            report = Recovery()
            try:
                report.compactions = compaction.recover(self.store, self.wal.folder)
                report.temp_files = self.store.discard_partials(f"*/date=*/.part-{self.writer_id}-*.tmp")
            except (OSError, pa.ArrowException) as err:
                raise TraceError(f"cannot recover the trace writer on {self.root}: {err}") from err
            pending = self.wal.sealed()
            report.segments = len(pending)
            report.events = sum(1 for name in pending for _ in self.wal.read(name))
            self._publish_sealed(report)
            if report.segments or report.compactions or report.temp_files:
                log.info("trace writer %s recovered: %s", self.writer_id, report)
            return report

    def compact(self) -> list[str]:
        """Compact every partition of this writer that has enough small files."""
        with self._publish_lock:
            self._check_open()
            try:
                folders = {f.folder for f in self.store.data_files()
                           if f.name.startswith(f"part-{self.writer_id}-")}
            except (OSError, pa.ArrowException) as err:
                raise TraceError(f"cannot list {self.root}: {err}") from err
            return self._compact(folders)

    def close(self) -> None:
        """Publish everything and release the write-ahead log."""
        with self._publish_lock:
            if self._closed:
                return
            self._closed = True
            self.wal.seal()
            try:
                self._publish_sealed()
            finally:
                self.wal.close()  # what was not published stays in the log for the next start

    def _check_open(self) -> None:
        if self._closed:
            raise TraceError(f"trace writer {self.writer_id} on {self.root} is closed")

    def _publish_sealed(self, report: Recovery | None = None) -> list[str]:
        written: list[str] = []
        folders: set[str] = set()
        for name in self.wal.sealed():
            try:
                parts = self._decode_segment(name)
            except (ValidationError, ValueError, KeyError) as err:
                self.wal.quarantine(name, f"{type(err).__name__}: {err}")
                if report is not None:
                    report.quarantined.append(name)
                continue
            try:
                for (cls, date), rows in sorted(parts.items(), key=lambda kv: (kv[0][0].table, kv[0][1])):
                    folder = f"{cls.table}/date={date}"
                    table = pa.Table.from_pylist(rows, schema=cls.arrow_schema())
                    written.append(self.store.write_parquet(
                        f"{folder}/{compaction.part_name(self.writer_id, name)}", table))
                    folders.add(folder)
                self.wal.remove(name)
            except (OSError, pa.ArrowException) as err:
                raise TraceError(f"cannot publish segment {name} under {self.root}: {err}") from err
        self._compact(folders)
        # a compaction reads whole partitions (up to compact_max_bytes): hand the buffers back to
        # the system, or Arrow's allocator keeps the peak resident for the life of the process
        pa.default_memory_pool().release_unused()
        return written

    def _decode_segment(self, name: str) -> dict[tuple[type[TraceEvent], str], list[dict]]:
        parts: dict[tuple[type[TraceEvent], str], list[dict]] = defaultdict(list)
        for payload in self.wal.read(name):
            event = decode(payload)
            parts[(type(event), event.partition_date())].append(event.to_row())
        return parts

    def _compact(self, folders: set[str]) -> list[str]:
        merged = []
        try:  # a merge that failed earlier in this process is finished first, as after a crash
            compaction.recover(self.store, self.wal.folder)
        except (OSError, pa.ArrowException) as err:
            raise TraceError(f"cannot finish an interrupted compaction under {self.root}: {err}") from err
        live = self.wal.live()
        for folder in sorted(folders):
            try:
                plan = compaction.plan(self.store, folder, self.writer_id, live,
                                       min_files=self.compact_min_files, max_bytes=self.compact_max_bytes)
                if plan is not None:
                    merged.append(compaction.run(plan, self.store, self.wal.folder))
            except (OSError, pa.ArrowException) as err:
                raise TraceError(f"cannot compact {self.store.location(folder)}: {err}") from err
        return merged


def encode(event: TraceEvent) -> bytes:
    """A record as a log payload: its table name, a newline, its JSON."""
    return event.table.encode() + b"\n" + event.model_dump_json().encode()


def decode(payload: bytes) -> TraceEvent:
    """The record a log payload holds (ValueError, KeyError or ValidationError if it is not one)."""
    table, _, body = payload.partition(b"\n")
    return _BY_TABLE[table.decode()].model_validate_json(body)
