"""Where published trace files live: a local folder or a prefix of an S3-compatible bucket.

`open_store(root)` takes a local path (or `file://` URI) or `s3://bucket/prefix`, with the
options pyarrow's `FileSystem.from_uri` reads from the query string (`endpoint_override`,
`scheme`, `region`, ...). With no `endpoint_override` in the URI, the endpoint comes from
`OPSAGENT_S3_ENDPOINT`, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL` (e.g.
`http://127.0.0.1:9000`), else AWS itself; credentials and region come from the standard AWS
variables and files. Paths given to a store are relative to its root, with `/` separators.

A local store publishes through `files.py` (temporary name, fsync, rename, fsync the folder). An
object store needs no temporary name: an upload appears whole or not at all, and the file is
serialised in memory first so a failure half-way never completes an upload.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from opsagent.agents.tracing import files
from opsagent.errors import TraceError

ENDPOINT_VARIABLES = ("OPSAGENT_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
"""Environment variables naming the S3 endpoint, first set wins (a URI's endpoint_override wins over all)."""

DATA_FILE = re.compile(r"^(?P<table>[^/._][^/]*)/date=(?P<date>[^/]+)/(?P<name>[^/._][^/]*\.parquet)$")
"""A published file, relative to the root: `<table>/date=<date>/<name>.parquet` (never hidden)."""


@dataclass(frozen=True)
class StoredFile:
    """A published data file: its path relative to the root and its size in bytes."""

    path: str
    size: int

    @property
    def folder(self) -> str:
        return self.path.rpartition("/")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def table(self) -> str:
        return self.path.partition("/")[0]

    @property
    def date(self) -> str:
        return self.folder.rpartition("/")[2].removeprefix("date=")


class TraceStore(ABC):
    """A trace root. Methods raise OSError or pyarrow.ArrowException on I/O failures."""

    uri: str
    """The root as a person (or DuckDB) names it: an absolute folder or s3://bucket/prefix."""
    filesystem: pafs.FileSystem
    local: bool

    @abstractmethod
    def location(self, path: str) -> str:
        """How `path` is named outside the store (absolute path or s3:// URI)."""

    @abstractmethod
    def write_parquet(self, path: str, table: pa.Table) -> str:
        """Publish `table` at `path`, whole or not at all, replacing what was there; returns its location."""

    @abstractmethod
    def remove(self, path: str) -> bool:
        """Remove a file (durably); False if it was already gone."""

    @abstractmethod
    def exists(self, path: str) -> bool:
        """Whether a file is published at `path`."""

    @abstractmethod
    def discard_partials(self, pattern: str) -> int:
        """Remove what interrupted writes left under names matching the glob `pattern` (a
        published name's temporary is `.<name>.tmp`); returns how many. Nothing on object stores."""

    @abstractmethod
    def _list(self, under: str) -> list[StoredFile]:
        """Every file below `under` (recursively); none if it does not exist."""

    def data_files(self, table: str | None = None) -> list[StoredFile]:
        """Every published file of `table` (of every table if None), sorted by path."""
        found = self._list(table or "")
        return sorted((f for f in found if DATA_FILE.match(f.path)), key=lambda f: f.path)

    def listdir(self, folder: str) -> list[StoredFile]:
        """The published files directly in `folder` (e.g. `actions/date=2025-03-01`)."""
        return sorted((f for f in self._list(folder) if f.folder == folder and DATA_FILE.match(f.path)),
                      key=lambda f: f.path)

    def read_parquet(self, path: str) -> pa.Table:
        """One file's rows (no partition columns added)."""
        with self.filesystem.open_input_file(self._key(path)) as handle:
            return pq.ParquetFile(handle).read()

    @abstractmethod
    def _key(self, path: str) -> str:
        """`path` as `self.filesystem` names it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


class LocalStore(TraceStore):
    """A folder on a local (or mounted) file system; publishing is fsync'ed and atomic."""

    local = True

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder).resolve()
        self.uri = str(self.folder)
        self.filesystem = pafs.LocalFileSystem()

    def location(self, path: str) -> str:
        return str(self.folder / path)

    def write_parquet(self, path: str, table: pa.Table) -> str:
        return str(files.write_parquet(self.folder / path, table))

    def remove(self, path: str) -> bool:
        return files.remove(self.folder / path)

    def exists(self, path: str) -> bool:
        return (self.folder / path).is_file()

    def discard_partials(self, pattern: str) -> int:
        count = 0
        for stale in self.folder.glob(pattern):
            stale.unlink(missing_ok=True)
            count += 1
        return count

    def _list(self, under: str) -> list[StoredFile]:
        top = self.folder / under
        if not top.is_dir():
            return []
        return [StoredFile(p.relative_to(self.folder).as_posix(), p.stat().st_size)
                for p in top.rglob("*.parquet") if p.is_file()]

    def _key(self, path: str) -> str:
        return str(self.folder / path)


class ObjectStore(TraceStore):
    """A prefix of an S3-compatible bucket, through pyarrow's S3FileSystem."""

    local = False

    def __init__(self, filesystem: pafs.FileSystem, bucket: str, prefix: str) -> None:
        self.filesystem = filesystem
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.base = f"{bucket}/{self.prefix}" if self.prefix else bucket
        self.uri = f"s3://{self.base}"

    def location(self, path: str) -> str:
        return f"s3://{self._key(path)}"

    def write_parquet(self, path: str, table: pa.Table) -> str:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue()  # serialised whole first: a failure here uploads nothing
        with self.filesystem.open_output_stream(self._key(path)) as out:
            out.write(data)
        return self.location(path)

    def remove(self, path: str) -> bool:
        try:
            self.filesystem.delete_file(self._key(path))
        except FileNotFoundError:
            return False
        return True

    def exists(self, path: str) -> bool:
        return self.filesystem.get_file_info(self._key(path)).type == pafs.FileType.File

    def discard_partials(self, pattern: str) -> int:
        return 0  # uploads are atomic: an interrupted one leaves no object

    def _list(self, under: str) -> list[StoredFile]:
        top = self._key(under).rstrip("/")
        selector = pafs.FileSelector(top, recursive=True, allow_not_found=True)
        start = len(self.base) + 1
        return [StoredFile(info.path[start:], info.size) for info in self.filesystem.get_file_info(selector)
                if info.type == pafs.FileType.File]

    def _key(self, path: str) -> str:
        return f"{self.base}/{path}" if path else self.base


def is_remote(root: Path | str) -> bool:
    """Whether `root` names an object store rather than a local folder."""
    return isinstance(root, str) and "://" in root and not root.startswith("file://")


def open_store(root: Path | str) -> TraceStore:
    """The store at `root`: a local folder, `file://` URI or `s3://bucket/prefix[?options]`.
    An object store's bucket must exist and be reachable; a bad URI raises TraceError."""
    if isinstance(root, Path):
        return LocalStore(root)
    if not isinstance(root, str) or not root:
        raise TraceError(f"a trace root is a folder or an s3://bucket/prefix URI, not {root!r}")
    if not is_remote(root):
        return LocalStore(urlsplit(root).path if root.startswith("file://") else root)
    parts = urlsplit(root)
    if parts.scheme != "s3":
        raise TraceError(f"unsupported trace root {root!r}: a local folder or s3://bucket/prefix")
    if not parts.netloc or "@" in parts.netloc:
        raise TraceError(f"trace root {root!r} names no bucket (s3://bucket/prefix; credentials go in "
                         "the AWS environment variables, not the URI)")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "endpoint_override" not in options:
        options |= _endpoint_from_env()
    uri = f"s3://{parts.netloc}{parts.path}" + (f"?{urlencode(options)}" if options else "")
    try:
        filesystem, _ = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise TraceError(f"cannot open trace root {root!r}: {err}") from err
    store = ObjectStore(filesystem, parts.netloc, parts.path)
    where = options.get("endpoint_override", "AWS")
    try:
        bucket = filesystem.get_file_info(parts.netloc)
    except (pa.ArrowException, OSError) as err:
        raise TraceError(f"cannot reach bucket {parts.netloc!r} at {where}: {err}") from err
    if bucket.type == pafs.FileType.NotFound:
        raise TraceError(f"bucket {parts.netloc!r} does not exist at {where} (trace root {store.uri})")
    return store


def _endpoint_from_env() -> dict[str, str]:
    """endpoint_override (and scheme, if the URL has one) from the first endpoint variable set."""
    for name in ENDPOINT_VARIABLES:
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        if "://" not in value:
            return {"endpoint_override": value}
        url = urlsplit(value)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise TraceError(f"{name}={value!r} is not an http(s)://host[:port] endpoint")
        return {"endpoint_override": url.netloc, "scheme": url.scheme}
    return {}
