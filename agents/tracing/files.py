"""Crash-safe file publishing: write under a hidden temporary name, fsync, rename, fsync the folder.

A reader listing the folder sees either no file or the whole file, never half of one; once a
function here returns, the file (or its removal) survives a power cut. Temporary files are named
`.<final name>.tmp`, so globs such as `*.parquet` never match them.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def tmp_path(path: Path) -> Path:
    """The temporary name `path` is written under before it is published."""
    return path.with_name(f".{path.name}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make the folder's entries (creations, renames, removals) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet(path: Path, table: pa.Table) -> Path:
    """Publish `table` as the Parquet file `path`, replacing any file of that name atomically."""
    return _publish(path, lambda handle: pq.write_table(table, handle))


def write_json(path: Path, value: Any) -> Path:
    """Publish `value` as the JSON file `path`, atomically."""
    data = json.dumps(value, sort_keys=True).encode()
    return _publish(path, lambda handle: handle.write(data))


def remove(path: Path) -> bool:
    """Remove `path` durably; False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def make_dirs(folder: Path) -> None:
    """Create `folder` and its missing parents, durably."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir(exist_ok=True)
        fsync_dir(created.parent)


def _publish(path: Path, write: Any) -> Path:
    tmp = tmp_path(path)
    make_dirs(path.parent)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception:  # a crash (or KeyboardInterrupt) may leave the temporary file: recovery removes it
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
