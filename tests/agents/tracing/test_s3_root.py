"""The trace store on an S3-compatible object store: moto's S3 server on the loopback, started once
for the module. Writers keep their write-ahead logs local and publish to the bucket exactly once;
the views read the bucket with pyarrow (no DuckDB extension)."""

from __future__ import annotations

import argparse
import io
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from moto.server import ThreadedMotoServer

from opsagent.agents.tracing import CaseEvent, TraceWriter, query
from opsagent.agents.tracing.audit import audit, case_timeline
from opsagent.agents.tracing.cli import add_parser, run, shell
from opsagent.agents.tracing.storage import ObjectStore, TraceStore, open_store
from opsagent.agents.tracing.views import views_sql
from opsagent.errors import CaseNotFound, TraceError
from tests.agents.tracing.durability import T0, abandon, make_events
from tests.agents.tracing.test_read_side import history

BUCKET = "opsagent-traces"


class Crash(BaseException):
    """The process dies here (not an Exception: nothing may catch it)."""


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """host:port of a moto S3 server on 127.0.0.1 with the bucket BUCKET; AWS variables set."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
            mp.setenv(name, value)
        for name in ("OPSAGENT_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
            mp.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            admin = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http",
                                      allow_bucket_creation=True, region="us-east-1")
            admin.create_dir(BUCKET)
            yield f"{host}:{port}"
        finally:
            server.stop()


@pytest.fixture
def root(endpoint: str) -> str:
    """A fresh prefix of the bucket, as a trace root URI."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:8]}?endpoint_override={endpoint}&scheme=http"


def ids(events) -> list[str]:
    return [e.event_id for e in events]


def event_ids(store: TraceStore) -> Counter[str]:
    """Every event_id in every object of the store (each read whole)."""
    found: Counter[str] = Counter()
    for file in store.data_files():
        found.update(store.read_parquet(file.path).column("event_id").to_pylist())
    return found


def assert_exactly_once(root: str, wal: Path, acked: list[str]) -> Counter[str]:
    """Each acknowledged id in exactly one row of the bucket, nothing else; the local log is empty."""
    found = event_ids(open_store(root))
    assert sorted(found) == sorted(acked) and set(found.values()) == {1}, found.most_common(3)
    assert not list(wal.glob("*.wal")) and not list(wal.glob("compact-*.json"))
    return found


def test_published_to_the_bucket_and_read_back_through_the_views_once(root: str, tmp_path: Path) -> None:
    events = make_events(12)
    with TraceWriter(root, tmp_path / "wal") as writer:
        writer.export(events)
        written = writer.flush()
        assert writer.flush() == []
    prefix = root.split("?")[0]
    segment = f"part-{writer.writer_id}-000001-00000001.parquet"
    assert sorted(written) == sorted(f"{prefix}/{t}/date={d}/{segment}" for t in ("actions", "case_events")
                                     for d in ("2025-03-01", "2025-03-02"))
    assert_exactly_once(root, tmp_path / "wal", ids(events))
    assert query(root, "SELECT count(*), count(DISTINCT event_id) FROM events")[1] == [(12, 12)]
    assert query(root, "SELECT date, count(*) FROM actions GROUP BY 1 ORDER BY 1")[1] == [
        (T0.date(), 4), ((T0.date().replace(day=2)), 4)]
    assert query(root, "SELECT count(*) FROM planner_calls")[1] == [(0,)]  # a table with no objects
    assert query(root, "SELECT getvariable('traces')")[1] == [(prefix,)]


def test_trace_commands_take_an_s3_root(root: str, tmp_path: Path, capsys) -> None:
    with TraceWriter(root, tmp_path / "wal") as writer:
        writer.export(history())

    def cli(*argv: str) -> int:
        parser = argparse.ArgumentParser(prog="opsagent")
        add_parser(parser.add_subparsers(dest="command", required=True))
        return run(parser.parse_args(argv))

    assert cli("traces", "sql", "SELECT status, count(*) AS n FROM cases GROUP BY 1 ORDER BY 1",
               "--traces", root, "--csv") == 0
    assert capsys.readouterr().out == "status,n\nescalated,1\nplanning,1\nresolved,2\n"
    assert "unsupervised high-risk actions: 0" in audit(root)
    assert "escalated: human said no" in case_timeline(root, "C-3")
    with pytest.raises(CaseNotFound):
        case_timeline(root, "C-404")
    assert cli("traces", "views-sql", "--traces", root) == 0  # for analysts with httpfs: no ?options
    assert capsys.readouterr().out.startswith(f"SET VARIABLE traces = '{root.split('?')[0]}';\n")

    out = io.StringIO()
    assert shell(root, iter([".tables\n", "SELECT count(*) AS n FROM approvals;\n", ".reload\n",
                             "SELECT count(*) AS n FROM approval_events;\n"]), out) == 0
    text = out.getvalue()
    assert "approval_events" in text and "_files_" not in text
    assert "n\n-\n2\n(1 rows)" in text and "n\n-\n4\n(1 rows)" in text


def test_the_views_are_a_snapshot_and_a_new_connection_sees_new_objects(root: str, tmp_path: Path) -> None:
    from opsagent.agents.tracing.views import connect

    with TraceWriter(root, tmp_path / "wal") as writer:
        writer.export(make_events(3))
        writer.flush()
        con = connect(root)
        writer.export(make_events(3, start=3))
        writer.flush()
    assert con.sql("SELECT count(*) FROM events").fetchall() == [(3,)]
    con.close()
    assert query(root, "SELECT count(*) FROM events")[1] == [(6,)]


def test_objects_without_the_newer_columns_read_with_them_null(root: str, tmp_path: Path) -> None:
    """An object written before `finished_at` and `schema_version` existed, next to a current one."""
    store = open_store(root)
    old = CaseEvent(case_id="C-1", exception_type="weight_mismatch", status="received", description="d",
                    entities={}, received_at=T0, recorded_at=T0).to_row()
    old = {k: v for k, v in old.items() if k not in ("finished_at", "schema_version", "event_id")}
    store.write_parquet("case_events/date=2025-03-01/part-old.parquet", pa.Table.from_pylist([old, old]))
    with TraceWriter(root, tmp_path / "wal") as writer:
        writer.export([CaseEvent(case_id="C-2", exception_type="weight_mismatch", status="resolved",
                                 description="d", entities={}, received_at=T0, recorded_at=T0,
                                 finished_at=T0)])
    rows = query(root, "SELECT case_id, schema_version, finished_at IS NULL, event_id IS NULL "
                       "FROM case_events ORDER BY 1")[1]
    assert rows[:2] == [("C-1", 1, True, True)] * 2  # two old rows without ids stay two rows
    assert rows[2][0] == "C-2" and rows[2][2:] == (False, False)


def test_a_writer_killed_before_publishing_is_recovered_exactly_once(root: str, tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    writer = TraceWriter(root, wal)
    writer.export(make_events(5))
    writer.export(make_events(5, start=5))
    assert open_store(root).data_files() == []
    abandon(writer)
    again = TraceWriter(root, wal, recover=False)
    report = again.recover()
    again.close()
    assert (report.segments, report.events, report.temp_files) == (1, 10, 0)
    assert again.writer_id == writer.writer_id
    assert_exactly_once(root, wal, [f"ev-{i}" for i in range(10)])


def test_a_segment_published_but_not_removed_is_published_again_in_place(root: str, tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    writer = TraceWriter(root, wal)
    writer.export(make_events(6))
    writer.wal.seal()
    (segment,) = wal.glob("*.wal")
    kept = shutil.copy(segment, tmp_path / "segment.bak")
    writer.flush()
    abandon(writer)
    shutil.move(kept, segment)  # the crash came between the uploads and removing the segment
    before = open_store(root).data_files()
    TraceWriter(root, wal).close()
    assert [f.path for f in open_store(root).data_files()] == [f.path for f in before]
    assert_exactly_once(root, wal, [f"ev-{i}" for i in range(6)])


def test_a_crash_mid_publish_loses_nothing(root: str, tmp_path: Path, monkeypatch) -> None:
    """The second object of a segment never uploads; the restarted writer publishes it all once."""
    wal, uploads = tmp_path / "wal", []
    real = ObjectStore.write_parquet

    def dying(self, path, table):
        uploads.append(path)
        if len(uploads) == 2:
            raise Crash
        return real(self, path, table)

    writer = TraceWriter(root, wal)
    writer.export(make_events(8))
    monkeypatch.setattr(ObjectStore, "write_parquet", dying)
    with pytest.raises(Crash):
        writer.flush()
    monkeypatch.undo()
    abandon(writer)
    assert len(open_store(root).data_files()) == 1
    TraceWriter(root, wal).close()
    assert_exactly_once(root, wal, [f"ev-{i}" for i in range(8)])


def test_small_objects_are_compacted_in_the_bucket(root: str, tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    writer = TraceWriter(root, wal, compact_min_files=3)
    for batch in range(7):
        writer.export(make_events(4, start=4 * batch))
        writer.flush()
    writer.close()
    store = open_store(root)
    w = writer.writer_id
    assert [f.name for f in store.listdir("actions/date=2025-03-01")] == [
        f"part-{w}-000001-00000001--000001-00000007.parquet"]
    assert len(store.data_files()) == 4  # one per table and date
    assert_exactly_once(root, wal, [f"ev-{i}" for i in range(28)])
    assert query(root, "SELECT count(*), count(DISTINCT event_id) FROM actions")[1] == [(18, 18)]


def test_compact_merges_what_an_earlier_writer_left(root: str, tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    with TraceWriter(root, wal, compact_min_files=50) as writer:
        for batch in range(3):
            writer.export(make_events(6, start=6 * batch))
            writer.flush()
    assert len(open_store(root).data_files()) == 12
    with TraceWriter(root, wal, compact_min_files=3) as again:
        assert len(again.compact()) == 4
    assert len(open_store(root).data_files()) == 4
    assert_exactly_once(root, wal, [f"ev-{i}" for i in range(18)])


@pytest.mark.parametrize("step", ["upload", "delete"])
def test_a_crash_mid_compaction_is_rolled_back_or_forward(root: str, tmp_path: Path, monkeypatch,
                                                          step: str) -> None:
    """Killed before the merged object was uploaded (roll back: inputs stay), or after it was and
    one input was deleted (roll forward: the other inputs go); the intent is in the local log."""
    wal = tmp_path / "wal"
    writer = TraceWriter(root, wal, compact_min_files=2)
    writer.export(make_events(5))
    writer.flush()
    writer.export(make_events(5, start=5))
    real_write, real_remove = ObjectStore.write_parquet, ObjectStore.remove
    removed: list[str] = []

    def upload(self, path, table):
        if step == "upload" and "--" in path:
            raise Crash
        return real_write(self, path, table)

    def delete(self, path):
        result = real_remove(self, path)
        removed.append(path)
        if step == "delete" and len(removed) == 1:
            raise Crash
        return result

    monkeypatch.setattr(ObjectStore, "write_parquet", upload)
    monkeypatch.setattr(ObjectStore, "remove", delete)
    with pytest.raises(Crash):
        writer.flush()
    monkeypatch.undo()
    abandon(writer)
    assert len(list(wal.glob("compact-*.json"))) == 1
    again = TraceWriter(root, wal, compact_min_files=50, recover=False)
    report = again.recover()
    again.close()
    assert report.compactions == 1
    names = [f.name for f in open_store(root).listdir("actions/date=2025-03-01")]
    merged = [n for n in names if "--" in n]
    assert (len(merged), len(names)) == ((0, 2) if step == "upload" else (1, 1))
    assert_exactly_once(root, wal, [f"ev-{i}" for i in range(10)])


def test_nodes_with_their_own_logs_share_one_bucket(root: str, tmp_path: Path) -> None:
    first = TraceWriter(root, tmp_path / "node-a", compact_min_files=2)
    second = TraceWriter(root, tmp_path / "node-b", compact_min_files=2)
    for batch in range(3):
        first.export(make_events(3, start=100 * batch))
        first.flush()
        second.export(make_events(3, start=100 * batch + 50))
        second.flush()
    first.close()
    second.close()
    owners = sorted(f.name.split("-")[1] for f in open_store(root).listdir("actions/date=2025-03-01"))
    assert owners == sorted([first.writer_id, second.writer_id])
    assert len(event_ids(open_store(root))) == 18
    assert query(root, "SELECT count(*) FROM events")[1] == [(18,)]


def test_the_endpoint_may_come_from_the_environment(endpoint: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OPSAGENT_S3_ENDPOINT", f"http://{endpoint}")
    root = f"s3://{BUCKET}/env-{uuid.uuid4().hex[:8]}"
    with TraceWriter(root, tmp_path / "wal") as writer:
        writer.export(make_events(3))
    assert query(root, "SELECT count(*) FROM events")[1] == [(3,)]
    monkeypatch.setenv("OPSAGENT_S3_ENDPOINT", "ftp://nowhere")
    with pytest.raises(TraceError, match="OPSAGENT_S3_ENDPOINT"):
        open_store(root)


def test_a_remote_root_needs_a_local_write_ahead_log(root: str, tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="local wal_dir"):
        TraceWriter(root)
    from opsagent.cluster.config import SystemConfig

    with pytest.raises(ValueError, match="trace_wal_dir"):
        SystemConfig(traces_dir=root)
    config = SystemConfig(traces_dir=root, trace_wal_dir=tmp_path / "wal")
    assert config.traces_dir == root and SystemConfig(traces_dir="traces").traces_dir == Path("traces")


@pytest.mark.parametrize(("uri", "message"), [
    ("s3:///traces", "names no bucket"),
    ("s3://key:secret@bucket/traces", "names no bucket"),
    ("ftp://host/traces", "unsupported trace root"),
    ("s3://{bucket}/t?endpoint_override={endpoint}&colour=blue", "Unexpected query parameter"),
    ("s3://no-such-bucket/t?endpoint_override={endpoint}&scheme=http", "bucket 'no-such-bucket' does not exist"),
])
def test_a_bad_root_is_a_clear_trace_error(endpoint: str, tmp_path: Path, uri: str, message: str) -> None:
    uri = uri.format(bucket=BUCKET, endpoint=endpoint)
    with pytest.raises(TraceError, match=message):
        TraceWriter(uri, tmp_path / "wal")
    assert not (tmp_path / "wal").exists()  # nothing opened
    with pytest.raises(TraceError, match=message):
        query(uri, "SELECT 1")


def test_a_failed_upload_is_a_trace_error_and_the_events_stay_in_the_log(root: str, tmp_path: Path,
                                                                         monkeypatch) -> None:
    wal = tmp_path / "wal"
    writer = TraceWriter(root, wal)
    writer.export(make_events(4))
    monkeypatch.setattr(ObjectStore, "write_parquet",
                        lambda self, path, table: (_ for _ in ()).throw(OSError("AWS Error SLOW_DOWN")))
    with pytest.raises(TraceError, match="SLOW_DOWN"):
        writer.flush()
    assert len(list(wal.glob("*.wal"))) == 1
    monkeypatch.undo()
    writer.close()
    assert_exactly_once(root, wal, [f"ev-{i}" for i in range(4)])


def test_an_object_compacted_away_while_being_read_is_listed_again(root: str, tmp_path: Path,
                                                                   monkeypatch) -> None:
    with TraceWriter(root, tmp_path / "wal") as writer:
        writer.export(make_events(6))
    real, failed = ObjectStore.read_parquet, []

    def vanishing(self, path):
        if not failed:
            failed.append(path)
            raise FileNotFoundError(path)
        return real(self, path)

    monkeypatch.setattr(ObjectStore, "read_parquet", vanishing)
    assert query(root, "SELECT count(*) FROM events")[1] == [(6,)]
    assert failed


def test_views_sql_names_the_bucket_for_duckdb_httpfs(root: str) -> None:
    script = views_sql(root)
    assert script.startswith(f"SET VARIABLE traces = '{root.split('?')[0]}';\n")
    assert "INSTALL httpfs" in script and "CREATE SECRET" in script


def test_publish_benchmark_runs_against_the_bucket(root: str, tmp_path: Path, capsys) -> None:
    """`bench --s3 URI` measures publishing to the bucket beside the local folder; no timing asserted."""
    from opsagent.evals.bench.trace_writes import main

    assert main(["--events", "100", "--dir", str(tmp_path), "--s3", root]) == 0
    out = capsys.readouterr().out
    assert "publish to Parquet (flush), s3" in out and "publish to Parquet (flush), local" in out
