"""TraceWriter: acknowledged through the write-ahead log, published exactly once, even when a
crash interrupts it at any file-system step (the real kill -9 test is tests/cluster/test_trace_crash.py)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opsagent.agents.tracing import SCHEMA_VERSION, ActionEvent, query
from opsagent.agents.tracing.compaction import merge
from opsagent.agents.tracing.writer import Recovery, TraceWriter, encode
from opsagent.errors import TraceError
from tests.agents.tracing.durability import abandon, assert_exactly_once, event_ids_in_files, make_events


def ids(events) -> list[str]:
    return [e.event_id for e in events]


def test_export_then_flush_publishes_one_file_per_table_and_date(tmp_path: Path) -> None:
    events = make_events(12)
    with TraceWriter(tmp_path) as writer:
        writer.export(events)
        written = writer.flush()
        assert writer.flush() == []
    names = {Path(p).relative_to(tmp_path).as_posix() for p in written}
    segment = f"part-{writer.writer_id}-000001-00000001.parquet"
    assert names == {f"{t}/date={d}/{segment}" for t in ("actions", "case_events")
                     for d in ("2025-03-01", "2025-03-02")}
    assert_exactly_once(tmp_path, ids(events))
    assert query(tmp_path, "SELECT count(*) FROM actions")[1] == [(8,)]
    assert query(tmp_path, "SELECT DISTINCT schema_version FROM case_events")[1] == [(SCHEMA_VERSION,)]
    meta = pq.read_schema(written[0]).metadata
    assert meta[b"opsagent.schema_version"] == str(SCHEMA_VERSION).encode()


def test_acknowledged_events_survive_a_writer_that_never_flushed(tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    writer = TraceWriter(tmp_path / "traces", wal)
    writer.export(make_events(5))
    writer.export(make_events(5, start=5))
    assert not list((tmp_path / "traces").rglob("*.parquet"))
    abandon(writer)
    again = TraceWriter(tmp_path / "traces", wal)
    report = again.recover()  # already done by the constructor: nothing left
    again.close()
    assert report.segments == 0
    assert_exactly_once(tmp_path / "traces", [f"ev-{i}" for i in range(10)])


def test_recovery_reports_what_it_published(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path, compact_min_files=2)
    writer.export(make_events(4))
    abandon(writer)
    again = TraceWriter(tmp_path, recover=False)
    report = again.recover()
    again.close()
    assert (report.segments, report.events, report.quarantined) == (1, 4, [])
    assert again.wal.epoch == writer.wal.epoch + 1 and again.writer_id == writer.writer_id


def test_a_torn_tail_is_dropped_and_acknowledged_records_kept(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path)
    writer.export(make_events(3))
    (segment,) = writer.wal.folder.glob("*.wal")
    abandon(writer)
    with open(segment, "ab") as handle:  # a frame the kill cut short: never acknowledged
        handle.write(b"\x40\x00\x00\x00\x01\x02\x03\x04" + encode(make_events(1, start=99)[0])[:20])
    TraceWriter(tmp_path).close()
    assert_exactly_once(tmp_path, ["ev-0", "ev-1", "ev-2"])


def test_publishing_a_segment_again_replaces_its_files(tmp_path: Path) -> None:
    """A crash after the files were published but before the segment was removed."""
    writer = TraceWriter(tmp_path)
    writer.export(make_events(6))
    writer.wal.seal()
    (segment,) = writer.wal.folder.glob("*.wal")
    kept = shutil.copy(segment, tmp_path / "segment.bak")
    writer.flush()
    abandon(writer)
    shutil.move(kept, segment)
    files = sorted(tmp_path.rglob("*.parquet"))
    TraceWriter(tmp_path).close()
    assert sorted(tmp_path.rglob("*.parquet")) == files
    assert_exactly_once(tmp_path, [f"ev-{i}" for i in range(6)])


def test_small_files_are_compacted_into_one_per_partition(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path, compact_min_files=3)
    for batch in range(7):
        writer.export(make_events(4, start=4 * batch))
        writer.flush()
    writer.close()
    folder = tmp_path / "actions" / "date=2025-03-01"
    names = sorted(p.name for p in folder.glob("*.parquet"))
    w = writer.writer_id
    # flushes 1-3 merged at the third, then 4-5 joined them at the fifth (3 files), then 6-7 (3 again)
    assert names == [f"part-{w}-000001-00000001--000001-00000007.parquet"]
    assert_exactly_once(tmp_path, [f"ev-{i}" for i in range(28)])
    assert query(tmp_path, "SELECT count(*), count(DISTINCT event_id) FROM actions")[1] == [(18, 18)]


def test_compact_merges_every_partition_with_enough_files(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path, compact_min_files=50)
    for batch in range(3):
        writer.export(make_events(6, start=6 * batch))
        writer.flush()
    writer.close()
    assert len(list(tmp_path.rglob("*.parquet"))) == 12
    again = TraceWriter(tmp_path, compact_min_files=3)
    assert len(again.compact()) == 4
    again.close()
    assert len(list(tmp_path.rglob("*.parquet"))) == 4
    assert_exactly_once(tmp_path, [f"ev-{i}" for i in range(18)])


def test_files_over_the_size_limit_are_not_merged_again(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path, compact_min_files=2, compact_max_bytes=1)
    for batch in range(3):
        writer.export(make_events(3, start=3 * batch))
        writer.flush()
    writer.close()
    assert len(list((tmp_path / "actions" / "date=2025-03-01").glob("*.parquet"))) == 3


class Crash(BaseException):
    """The process dies here (not an Exception: nothing may catch it)."""


def _inject(monkeypatch: pytest.MonkeyPatch, at: int | None, after: bool) -> list[str]:
    """Crash at the `at`-th os.replace / os.unlink (before it, or after it took effect);
    returns the names of the calls made."""
    calls: list[str] = []

    def hooked(real):
        def call(*args, **kwargs):
            calls.append(real.__name__)
            if len(calls) == at and not after:
                raise Crash
            result = real(*args, **kwargs)
            if len(calls) == at and after:
                raise Crash
            return result
        return call

    monkeypatch.setattr(os, "replace", hooked(os.replace))
    monkeypatch.setattr(os, "unlink", hooked(os.unlink))
    return calls


def _run_scenario(base: Path, at: int | None, after: bool) -> tuple[list[str], Recovery]:
    """Export and flush five batches, crashing at the given step; restart and check.
    Returns the calls made and what recovery found."""
    root, wal = base / "traces", base / "wal"
    writer = TraceWriter(root, wal, compact_min_files=3, sync=False)  # an in-process crash keeps the page cache
    acked: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        calls = _inject(mp, at, after)
        try:
            for batch in range(5):
                events = make_events(5, start=5 * batch)
                writer.export(events)
                acked.extend(ids(events))
                writer.flush()
        except Crash:
            pass
    abandon(writer)
    restarted = TraceWriter(root, wal, compact_min_files=3, recover=False)
    report = restarted.recover()
    restarted.close()
    assert_exactly_once(root, acked, unacked=[f"ev-{i}" for i in range(len(acked), len(acked) + 5)])
    return calls, report


def test_a_crash_at_any_file_system_step_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Crash after every rename and removal of publishing and compacting, and before every
    rename (leaving a temporary file); restart on the same folders each time."""
    calls, _ = _run_scenario(tmp_path / "clean", None, False)
    assert calls.count("replace") > 25 and calls.count("unlink") > 25  # 5 segments, 8 compactions
    reports = [_run_scenario(tmp_path / f"{at}-{after}", at, after)[1]
               for at, name in enumerate(calls, start=1)
               for after in ((False, True) if name == "replace" else (True,))]
    # recovery met each kind of interrupted work somewhere
    assert any(r.segments for r in reports) and any(r.temp_files for r in reports)
    assert any(r.compactions for r in reports)


def test_a_failed_flush_is_finished_by_the_next_one(tmp_path: Path, monkeypatch) -> None:
    """An I/O error mid-compaction (inputs partly removed) raises; the next flush rolls it forward."""
    writer = TraceWriter(tmp_path, compact_min_files=2)
    writer.export(make_events(5))
    writer.flush()
    writer.export(make_events(5, start=5))
    real, calls = os.unlink, []

    def failing(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # the publish removed its segment; the first merge removed one input
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", failing)
    with pytest.raises(TraceError, match="No space left"):
        writer.flush()
    monkeypatch.setattr(os, "unlink", real)
    writer.export(make_events(5, start=10))
    writer.flush()
    writer.close()
    assert_exactly_once(tmp_path, [f"ev-{i}" for i in range(15)])


def test_concurrent_exports_are_all_acknowledged_once(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path, compact_min_files=4)
    stop = threading.Event()

    def publisher() -> None:
        while not stop.is_set():
            writer.flush()

    def exporter(worker: int) -> None:
        for batch in range(25):
            writer.export(make_events(2, start=worker * 1000 + batch * 2))

    threads = [threading.Thread(target=exporter, args=(w,)) for w in range(4)]
    flusher = threading.Thread(target=publisher)
    flusher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    flusher.join()
    writer.close()
    assert_exactly_once(tmp_path, [f"ev-{w * 1000 + i}" for w in range(4) for i in range(50)])


def test_one_writer_per_log(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path)
    with pytest.raises(TraceError, match="another trace writer"):
        TraceWriter(tmp_path)
    writer.close()
    TraceWriter(tmp_path).close()


def test_writers_sharing_a_root_never_touch_each_others_files(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    first = TraceWriter(root, tmp_path / "wal-a", compact_min_files=2)
    second = TraceWriter(root, tmp_path / "wal-b", compact_min_files=2)
    assert first.writer_id != second.writer_id
    for batch in range(3):
        first.export(make_events(3, start=100 * batch))
        first.flush()
        second.export(make_events(3, start=100 * batch + 50))
        second.flush()
    first.close()
    second.close()
    folder = root / "actions" / "date=2025-03-01"
    owners = sorted(p.name.split("-")[1] for p in folder.glob("*.parquet"))
    assert owners == sorted([first.writer_id, second.writer_id])
    assert len(event_ids_in_files(root)) == 18


def test_a_segment_that_does_not_decode_is_quarantined_not_lost(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path)
    writer.wal.append([b"no_such_table\n{}"])
    writer.wal.seal()
    writer.export(make_events(2))
    writer.flush()
    writer.close()
    assert_exactly_once(tmp_path, ["ev-0", "ev-1"])
    (bad,) = (tmp_path / "_wal" / "quarantine").glob("*.wal")
    assert "KeyError" in bad.with_suffix(".reason.txt").read_text()


def test_closed_writer_refuses_work(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path)
    writer.close()
    writer.close()
    with pytest.raises(TraceError, match="closed"):
        writer.export(make_events(1))
    with pytest.raises(TraceError, match="closed"):
        writer.flush()
    with pytest.raises(TraceError, match="not a trace record"):
        TraceWriter(tmp_path / "other").export(["nope"])


def test_merge_fills_columns_older_files_lack() -> None:
    old = pa.table({"a": pa.array([1], pa.int64())})
    new = pa.Table.from_pylist([{"a": 2, "event_id": "x"}], schema=pa.schema(
        [pa.field("a", pa.int64(), nullable=False), pa.field("event_id", pa.string(), nullable=False)],
        metadata={"v": "2"}))
    merged = merge([old, new])
    assert merged.to_pylist() == [{"a": 1, "event_id": None}, {"a": 2, "event_id": "x"}]
    assert merged.schema.field("event_id").nullable and merged.schema.metadata == {b"v": b"2"}


def test_views_count_a_record_present_in_two_files_once(tmp_path: Path) -> None:
    """What a reader sees between a compaction's output appearing and its inputs going."""
    event = make_events(2)[1]
    assert isinstance(event, ActionEvent)
    for name in ("part-a.parquet", "part-b.parquet"):
        folder = tmp_path / "actions" / "date=2025-03-02"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([event.to_row()], schema=ActionEvent.arrow_schema()), folder / name)
    assert query(tmp_path, "SELECT count(*) FROM actions")[1] == [(1,)]


def test_throughput_benchmark_runs(tmp_path: Path, capsys) -> None:
    """`python -m opsagent.evals.bench.trace_writes` prints events/s; no timing is asserted."""
    from opsagent.evals.bench.trace_writes import main

    assert main(["--events", "200", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "records_per_s" in out and "publish to Parquet (flush)" in out
    assert not list(tmp_path.iterdir())  # its temporary folder is gone
