"""Write throughput of the trace path: `python -m opsagent.evals.bench.trace_writes [--events N] [--dir D]
[--s3 URI | --moto]`.

Measures, on the disk holding `--dir` (default: a temporary folder):
- acknowledged exports through the write-ahead log with fsync: one record per call (what the case
  runner does), one record per call from 8 threads (group commit), batches of 100;
- publishing: `flush()` turning the log into Parquet files, records per second;
- the whole path with compaction on (flush every 200 records), as the actor runs it.
With `--s3 s3://bucket/prefix[?endpoint_override=...]` (credentials from the AWS variables), or
`--moto` (a local moto S3 server on 127.0.0.1, from the test extra), publishing and the whole path
are measured again with that root (the log stays in the local folder), under a fresh prefix.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from opsagent.agents.tracing.records import ActionEvent, TraceEvent
from opsagent.agents.tracing.writer import TraceWriter
from opsagent.cli_output import format_table


def sample_events(n: int) -> list[TraceEvent]:
    """`n` action records the size of a real one (~600 bytes of JSON)."""
    now = datetime.now(UTC)
    return [ActionEvent(
        case_id=f"C-{i // 12:06d}", step=i % 12, tool="tms_open_weight_dispute",
        args={"shipment_id": f"SHP-{i:06d}", "claimed_weight_kg": 12.5, "reason": "scan says 12.5 kg"},
        risk="low", decision="allow", reasons=["tms_open_weight_dispute is low risk for weight_mismatch"],
        writes=True, executed=True, dry_run=False, result={"dispute_id": f"WD-{i}", "status": "open"},
        started_at=now, finished_at=now, policy_version="a37860a09e4f", args_digest="ab" * 32,
    ) for i in range(n)]


def run(events: int, folder: Path, s3: str | None = None) -> list[tuple]:
    """(measurement, records, seconds, records per second, p50 ms per call, p99 ms per call)."""
    records = sample_events(events)
    rows = []

    def measure(name: str, work: Callable[[TraceWriter], list[float]], count: int, *,
                remote: str | None = None, **kw) -> None:
        target = folder / name.replace(" ", "-").replace(",", "")
        if remote is not None:
            kw["wal_dir"] = target / "_wal"
        writer = TraceWriter(_under(remote, target.name) if remote else target, **kw)
        started = time.perf_counter()
        latencies = work(writer)
        seconds = time.perf_counter() - started
        writer.close()
        p50 = statistics.median(latencies) * 1000 if latencies else None
        p99 = sorted(latencies)[int(len(latencies) * 0.99)] * 1000 if latencies else None
        rows.append((name, count, round(seconds, 3), round(count / seconds), p50, p99))

    def one_by_one(writer: TraceWriter) -> list[float]:
        latencies = []
        for event in records:
            t = time.perf_counter()
            writer.export([event])
            latencies.append(time.perf_counter() - t)
        return latencies

    def threaded(writer: TraceWriter, threads: int = 8) -> list[float]:
        latencies: list[float] = []
        lock = threading.Lock()

        def work(part: list[TraceEvent]) -> None:
            mine = []
            for event in part:
                t = time.perf_counter()
                writer.export([event])
                mine.append(time.perf_counter() - t)
            with lock:
                latencies.extend(mine)

        workers = [threading.Thread(target=work, args=(records[i::threads],)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return latencies

    def batches(writer: TraceWriter, size: int = 100) -> list[float]:
        latencies = []
        for i in range(0, len(records), size):
            t = time.perf_counter()
            writer.export(records[i:i + size])
            latencies.append(time.perf_counter() - t)
        return latencies

    def whole_path(writer: TraceWriter, every: int = 200) -> list[float]:
        latencies = []
        for i, event in enumerate(records, start=1):
            t = time.perf_counter()
            writer.export([event])
            latencies.append(time.perf_counter() - t)
            if i % every == 0:
                writer.flush()
        writer.flush()
        return latencies

    measure("export 1/call, fsync", one_by_one, events)
    measure("export 1/call, 8 threads, fsync", threaded, events)
    measure("export 100/call, fsync", batches, events)
    measure("export 1/call, no fsync", one_by_one, events, sync=False)

    def publish(name: str, root: Path | str, wal: Path) -> None:
        pending = TraceWriter(root, wal)  # fill a log, then time publishing it alone
        pending.export(records)
        pending.wal.seal()
        pending.wal.close()
        writer = TraceWriter(root, wal, recover=False)
        started = time.perf_counter()
        writer.flush()
        seconds = time.perf_counter() - started
        writer.close()
        rows.append((name, events, round(seconds, 3), round(events / seconds), None, None))

    publish("publish to Parquet (flush), local", folder / "publish", folder / "publish" / "_wal")
    measure("export + flush every 200, compaction", whole_path, events, compact_min_files=4)
    if s3 is not None:
        publish("publish to Parquet (flush), s3", _under(s3, "publish"), folder / "publish-s3-wal")
        measure("export + flush every 200, compaction, s3", whole_path, events, remote=s3,
                compact_min_files=4)
    return rows


def _under(uri: str, name: str) -> str:
    """`uri` (s3://bucket/prefix?options) with `/name` added to its path."""
    path, sep, options = uri.partition("?")
    return f"{path.rstrip('/')}/{name}{sep}{options}"


@contextlib.contextmanager
def moto_bucket() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port) with a bucket; yields the root URI."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as err:
        raise SystemExit("--moto needs moto[server] (pip install -e '.[test]')") from err
    import pyarrow.fs as pafs

    for name, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        os.environ.setdefault(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", region="us-east-1",
                          allow_bucket_creation=True).create_dir("bench")
        yield f"s3://bench/traces?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="records per measurement (default 5000)")
    parser.add_argument("--dir", type=Path, help="folder on the disk to measure (default: a temporary one)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--s3", help="also measure publishing to this s3://bucket/prefix root")
    where.add_argument("--moto", action="store_true", help="also measure publishing to a local moto S3 server")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(moto_bucket()) if args.moto else args.s3
        if s3 is not None:
            s3 = _under(s3, f"bench-{uuid.uuid4().hex[:8]}")
        folder = stack.enter_context(tempfile.TemporaryDirectory(dir=args.dir))
        rows = run(args.events, Path(folder), s3)
    print(format_table(["measurement", "records", "seconds", "records_per_s", "p50_ms", "p99_ms"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
