"""Kill -9 the trace writer mid-stream, restart it on the same folders, and find every
acknowledged event in the Parquet dataset exactly once.

The writer runs in its own OS process (a plain subprocess, no Ray): it reads batches from stdin,
answers `ack` once `TraceWriter.export` returned (the records are in the fsynced write-ahead log),
and a second thread publishes and compacts in a loop, so the kill lands in the middle of
appending, publishing or compacting. Each round is killed with SIGKILL after a random time; the
next round's start-up recovers. A last start-up recovers and closes cleanly.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from opsagent.agents.tracing import query
from tests.agents.tracing.durability import assert_exactly_once

REPO = Path(__file__).resolve().parents[2]

WRITER = r"""
import sys, threading
from opsagent.agents.tracing.writer import TraceWriter
from tests.agents.tracing.durability import make_events

writer = TraceWriter(sys.argv[1], sys.argv[2], compact_min_files=3, recover=False)
report = writer.recover()
print(f"ready {report.segments} {report.events} {report.compactions} {report.temp_files}", flush=True)

def publish():
    while True:
        writer.flush()

threading.Thread(target=publish, daemon=True).start()
for line in sys.stdin:
    start, count = map(int, line.split())
    writer.export(make_events(count, start))
    print(f"ack {start} {count}", flush=True)
writer.close()
print("closed", flush=True)
"""

BATCH = 7
IN_FLIGHT = 4


def _start(root: Path, wal: Path) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(wal)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1)
    word, *numbers = proc.stdout.readline().split()
    assert word == "ready", word
    return proc, [int(n) for n in numbers]


def test_kill_9_mid_stream_loses_and_duplicates_no_acknowledged_event(tmp_path: Path) -> None:
    root, wal = tmp_path / "traces", tmp_path / "wal"
    rng = random.Random(5)
    acked: set[str] = set()
    sent: set[str] = set()
    next_id = 0
    recoveries = []
    for _ in range(6):
        proc, recovered = _start(root, wal)
        recoveries.append(recovered)
        in_flight: deque[tuple[int, int]] = deque()
        deadline = time.monotonic() + rng.uniform(0.2, 0.8)
        while time.monotonic() < deadline:
            while len(in_flight) < IN_FLIGHT:  # keep batches queued, so the kill cuts one short
                proc.stdin.write(f"{next_id} {BATCH}\n")
                in_flight.append((next_id, BATCH))
                sent.update(f"ev-{i}" for i in range(next_id, next_id + BATCH))
                next_id += BATCH
            proc.stdin.flush()
            word, start, count = proc.stdout.readline().split()
            assert (word, (int(start), int(count))) == ("ack", in_flight.popleft())
            acked.update(f"ev-{i}" for i in range(int(start), int(start) + int(count)))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        proc.stdin.close()
        proc.stdout.close()

    proc, recovered = _start(root, wal)  # the last start-up recovers, then closes cleanly
    recoveries.append(recovered)
    out, _ = proc.communicate("", timeout=60)
    assert out.split() == ["closed"] and proc.returncode == 0

    ids = assert_exactly_once(root, sorted(acked), unacked=sorted(sent - acked))
    assert len(acked) > 200
    assert sum(segments for segments, *_ in recoveries) > 0  # some kills left the log unpublished
    assert query(root, "SELECT count(*) - count(DISTINCT event_id) FROM events")[1] == [(0,)]
    assert query(root, "SELECT count(*) FROM events")[1] == [(len(ids),)]
    print(f"\n{len(acked)} acknowledged, {len(ids) - len(acked)} unacknowledged that made it; "
          f"recoveries (segments, events, compactions, temp files): {recoveries}")
