"""Judged cases written straight to a trace store: evidence for the autonomy gates' tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from opsagent.agents.tracing.parquet import ParquetExporter
from opsagent.agents.tracing.records import ActionEvent, CaseEvent, VerdictEvent


def trace_verdicts(root: Path | str, exception_type: str, mode: str | None, results: list[bool],
                   start: datetime, *, source: str = "review",
                   spacing: timedelta = timedelta(minutes=1)) -> list[str]:
    """One finished case per result, decided in `mode` (one read), with a recorded verdict,
    `spacing` apart from `start`; returns the case ids."""
    ids = []
    with ParquetExporter(root) as out:
        for i, correct in enumerate(results):
            case_id = f"case-{exception_type[:6]}-{mode or 'none'}-{start.timestamp():.0f}-{i}"
            at = start + i * spacing
            out.export([
                CaseEvent(case_id=case_id, exception_type=exception_type, status="resolved", description="d",
                          entities={"shipment_id": f"S{i}"}, received_at=at, finished_at=at, recorded_at=at),
                ActionEvent(case_id=case_id, step=1, tool="wms_get_shipment", args={}, risk="low",
                            decision="allow", reasons=[], writes=False, executed=True, dry_run=False,
                            started_at=at, policy_version="v", args_digest="d", autonomy_mode=mode),
                VerdictEvent(case_id=case_id, exception_type=exception_type, autonomy_mode=mode, source=source,
                             correct=correct, reason="r", actor="omar", case_received_at=at, recorded_at=at)])
            ids.append(case_id)
    return ids
