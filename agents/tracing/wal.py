"""The write-ahead log: append-only segment files of checksummed frames in one local folder.

`append` returns once its frames are on disk (fsync): that is the acknowledgement. Concurrent
appends from several threads share one fsync (group commit). `seal` closes the active segment;
sealed segments are what the trace writer publishes, then `remove`s.

Layout of the folder:
  LOCK                         flock'ed by the one live writer (released by the kernel on kill -9)
  STATE.json                   {"writer_id", "epoch"}; the epoch goes up by one at every start
  <epoch:06d>-<seq:08d>.wal    segments; a segment name is never reused
  quarantine/                  segments whose records could not be decoded, kept for an operator
A frame is `<u32 length><u32 crc32>` (little-endian) then the payload. Reading stops at the first
incomplete or corrupt frame: only a write that was never acknowledged can be torn.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from opsagent.agents.tracing.files import fsync_dir, make_dirs, write_json
from opsagent.errors import TraceError

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")
_SEGMENT = re.compile(r"^(\d{6}-\d{8})\.wal$")


@dataclass
class _Active:
    name: str
    fd: int
    size: int = 0


class WriteAheadLog:
    """One writer's log. Opening it takes the folder's lock (a second writer fails at once) and
    starts a new epoch; every segment left by an earlier run counts as sealed."""

    def __init__(self, folder: Path | str, *, sync: bool = True) -> None:
        self.folder = Path(folder)
        self.sync = sync
        make_dirs(self.folder)
        self._lock_fd = os.open(self.folder / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise TraceError(f"another trace writer holds the write-ahead log in {self.folder}") from None
        state = self._read_state()
        self.writer_id: str = state.get("writer_id") or uuid.uuid4().hex[:8]
        self.epoch: int = int(state.get("epoch", 0)) + 1
        write_json(self.folder / "STATE.json", {"writer_id": self.writer_id, "epoch": self.epoch})
        self._seq = 0
        self._active: _Active | None = None
        self._written = (0, 0)  # (seq, size) appended, and fsynced below
        self._synced = (0, 0)
        self._lock = threading.Lock()  # the active segment
        self._sync_lock = threading.Lock()  # taken before _lock, never after
        self._closed = False

    def append(self, payloads: Sequence[bytes]) -> None:
        """Append one frame per payload; returns once they are durable."""
        data = b"".join(_HEADER.pack(len(p), zlib.crc32(p)) + p for p in payloads)
        if not data:
            return
        with self._lock:
            if self._closed:
                raise TraceError(f"write-ahead log {self.folder} is closed")
            active = self._active or self._open_segment()
            _write_all(active.fd, data)
            active.size += len(data)
            self._written = target = (self._seq, active.size)
        self._sync_to(target)

    def seal(self) -> str | None:
        """Close the active segment (durably); returns its name, None if nothing was appended."""
        with self._sync_lock, self._lock:
            active, self._active = self._active, None
            if active is None:
                return None
            try:
                if self.sync:
                    os.fsync(active.fd)
                self._synced = self._written
            finally:
                os.close(active.fd)
            return active.name

    def sealed(self) -> list[str]:
        """Names of the segments not being appended to, oldest first."""
        with self._lock:  # an append may be creating the next active segment
            active = self._active.name if self._active else None
            return sorted(self._segments() - {active})

    def live(self) -> set[str]:
        """Every segment still in the log, sealed or active."""
        with self._lock:
            return self._segments()

    def read(self, name: str) -> Iterator[bytes]:
        """The payloads of a segment, up to its first torn or corrupt frame."""
        data = (self.folder / f"{name}.wal").read_bytes()
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, offset)
            payload = data[offset + _HEADER.size: offset + _HEADER.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                break
            yield payload
            offset += _HEADER.size + length
        if offset < len(data):
            log.warning("write-ahead log %s: dropped %d bytes after the last whole frame",
                        name, len(data) - offset)

    def remove(self, name: str) -> None:
        """Delete a published segment (durably)."""
        os.unlink(self.folder / f"{name}.wal")
        fsync_dir(self.folder)

    def quarantine(self, name: str, reason: str) -> Path:
        """Move a segment that cannot be published out of the log, with the reason beside it."""
        target = self.folder / "quarantine"
        make_dirs(target)
        (target / f"{name}.reason.txt").write_text(reason + "\n")
        os.replace(self.folder / f"{name}.wal", target / f"{name}.wal")
        fsync_dir(target)
        fsync_dir(self.folder)
        log.error("write-ahead log segment %s quarantined: %s", name, reason)
        return target / f"{name}.wal"

    def close(self) -> None:
        """Seal the active segment and release the lock."""
        if self._closed:
            return
        self.seal()
        with self._lock:
            self._closed = True
        os.close(self._lock_fd)

    def _segments(self) -> set[str]:
        return {m.group(1) for p in self.folder.iterdir() if (m := _SEGMENT.match(p.name))}

    def _open_segment(self) -> _Active:
        self._seq += 1
        name = f"{self.epoch:06d}-{self._seq:08d}"
        fd = os.open(self.folder / f"{name}.wal", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fsync_dir(self.folder)
        self._active = _Active(name, fd)
        return self._active

    def _sync_to(self, target: tuple[int, int]) -> None:
        if not self.sync:
            return
        with self._sync_lock:
            if self._synced >= target:  # another thread's fsync (or a seal) covered these bytes
                return
            with self._lock:
                active, upto = self._active, self._written
            if active is not None:
                os.fdatasync(active.fd)
            self._synced = upto

    def _read_state(self) -> dict:
        path = self.folder / "STATE.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as err:
            raise TraceError(f"unreadable {path}: {err}") from err


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
