"""Helpers for the durability tests: events with known ids, and the exactly-once check on files."""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq

from opsagent.agents.tracing import ActionEvent, CaseEvent, TraceEvent
from opsagent.agents.tracing.writer import TraceWriter

T0 = datetime(2025, 3, 1, 23, 59, 59, tzinfo=timezone.utc)


def make_events(n: int, start: int = 0) -> list[TraceEvent]:
    """`n` events with ids `ev-<i>`, over two tables and two dates."""
    events: list[TraceEvent] = []
    for i in range(start, start + n):
        at = T0 + timedelta(seconds=i % 2)  # the 1st and the 2nd of March
        if i % 3:
            events.append(ActionEvent(
                event_id=f"ev-{i}", case_id=f"C-{i // 10}", step=i, tool="tms_open_weight_dispute",
                args={"shipment_id": f"SHP-{i}"}, risk="low", decision="allow", reasons=["ok"], writes=True,
                executed=True, dry_run=False, result={"ok": True}, started_at=at, policy_version="v",
                args_digest="ab" * 32))
        else:
            events.append(CaseEvent(
                event_id=f"ev-{i}", case_id=f"C-{i // 10}", exception_type="weight_mismatch", status="planning",
                description="d", entities={"shipment_id": f"SHP-{i}"}, received_at=T0, recorded_at=at))
    return events


def event_ids_in_files(root: Path) -> Counter[str]:
    """Every event_id in every published Parquet file under `root` (each file is read whole)."""
    ids: Counter[str] = Counter()
    for path in sorted(root.glob("*/date=*/*.parquet")):
        ids.update(pq.read_table(path).column("event_id").to_pylist())
    return ids


def assert_exactly_once(root: Path, acked: list[str], *, unacked: list[str] = ()) -> Counter[str]:
    """Every acknowledged id in exactly one row; nothing else but (at most once) unacked ids;
    no temporary files, no compaction intents and no log segments left."""
    ids = event_ids_in_files(root)
    missing = [i for i in acked if ids[i] != 1]
    assert not missing, f"{len(missing)} acknowledged events not exactly once, e.g. {missing[:5]}"
    duplicated = [i for i, n in ids.items() if n > 1]
    assert not duplicated, f"duplicated: {duplicated[:5]}"
    assert set(ids) <= set(acked) | set(unacked)
    assert not list(root.rglob(".*.tmp"))
    assert not list(root.rglob("compact-*.json"))
    assert not [p for p in root.rglob("*.wal") if "quarantine" not in p.parts]
    return ids


def abandon(writer: TraceWriter) -> None:
    """Drop a writer as a killed process would: no flush, no close; its descriptors are closed
    (which releases the log's lock, as the kernel does for a dead process)."""
    wal = writer.wal
    if wal._active is not None:
        os.close(wal._active.fd)
        wal._active = None
    os.close(wal._lock_fd)
    wal._closed = True
