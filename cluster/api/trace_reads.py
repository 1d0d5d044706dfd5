"""What the API reads from the trace store: a case's timeline and the overview's figures.

Queries run on the DuckDB views (agents/tracing/views.py) in a worker thread, on one connection
per replica (agents/tracing/live.py) that is made again when the store's published files change.
The trace writer publishes at least once a second, so a figure can lag the cases' live state by
about that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from opsagent.agents.tracing.evidence import case_verdicts
from opsagent.agents.tracing.report import UNSUPERVISED_HIGH_RISK
from opsagent.agents.tracing.live import LiveViews
from opsagent.cluster.api.models import ClassStats, TimelineEntry
from opsagent.errors import TraceError
from opsagent.policy.config import PolicyConfig
from opsagent.policy.gates import ClassStatus, class_statuses
from opsagent.policy.modes import ClassMode

TIMELINE = """
SELECT ts, kind, step, summary FROM events WHERE case_id = $case_id
ORDER BY ts, CASE kind WHEN 'planner' THEN 0 WHEN 'approval' THEN 1 WHEN 'action' THEN 2 ELSE 3 END
"""

TOTALS = """
WITH asked AS (SELECT DISTINCT case_id FROM approvals)
SELECT count(*) AS cases,
       count(*) FILTER (WHERE c.status = 'resolved' AND asked.case_id IS NULL) AS automated,
       count(*) FILTER (WHERE c.status NOT IN ('resolved', 'escalated', 'failed', 'proposed')) AS open,
       quantile_cont(epoch(c.finished_at - c.received_at), 0.5) AS p50,
       quantile_cont(epoch(c.finished_at - c.received_at), 0.95) AS p95
FROM cases c LEFT JOIN asked USING (case_id)
"""

PER_CLASS = """
WITH asked AS (SELECT DISTINCT case_id FROM approvals)
SELECT c.exception_type, count(*) AS cases,
       count(*) FILTER (WHERE c.status = 'resolved' AND asked.case_id IS NULL) AS automated,
       count(*) FILTER (WHERE asked.case_id IS NOT NULL) AS with_approval,
       count(*) FILTER (WHERE c.status = 'escalated') AS escalated,
       count(*) FILTER (WHERE c.status NOT IN ('resolved', 'escalated', 'failed', 'proposed')) AS open
FROM cases c LEFT JOIN asked USING (case_id)
GROUP BY 1 ORDER BY 1
"""

PER_HOUR = """
SELECT date_trunc('hour', received_at) AS hour, count(*) FROM cases
WHERE received_at >= $since GROUP BY 1
"""


class TraceReads:
    """Read-only queries over the trace store at `root` (a folder or an object-store URI)."""

    def __init__(self, root: str | Path) -> None:
        self.root = root
        self.views = LiveViews(root)

    async def timeline(self, case_id: str) -> list[TimelineEntry]:
        rows = await asyncio.to_thread(_retried, self._rows, TIMELINE, {"case_id": case_id})
        return [TimelineEntry(ts=ts, kind=kind, step=step, summary=summary or "")
                for ts, kind, step, summary in rows]

    async def overview(self) -> dict[str, Any]:
        """Figures over every traced case: status counts, automation, latency, per class, the
        unsupervised-high-risk count and cases received per hour over the last 24 hours."""
        return await asyncio.to_thread(_retried, self._overview)

    async def autonomy(self, modes: list[ClassMode], config: PolicyConfig) -> list[ClassStatus]:
        """The gates' view of every class (policy/gates.py) over the modes the policy actor holds."""
        verdicts = await asyncio.to_thread(_retried, self.views.run, case_verdicts)
        return class_statuses(verdicts, _RecordedModes(modes), config)

    def _overview(self) -> dict[str, Any]:
        return self.views.run(self._figures)

    def _figures(self, con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        since = now - timedelta(hours=23)
        by_status = dict(con.execute("SELECT status, count(*) FROM cases GROUP BY 1").fetchall())
        cases, automated, still_open, p50, p95 = con.execute(TOTALS).fetchone()
        per_class = [ClassStats(exception_type=r[0], cases=r[1], automated=r[2],
                                with_approval=r[3], escalated=r[4], open=r[5])
                     for r in con.execute(PER_CLASS).fetchall()]
        (unsupervised,) = con.execute(UNSUPERVISED_HIGH_RISK).fetchone()
        hours = {h.astimezone(UTC): n for h, n in con.execute(PER_HOUR, {"since": since}).fetchall()}
        return {
            "cases": sum(by_status.values()), "by_status": by_status,
            "automated": automated, "open_cases": still_open,
            "automation_rate": round(automated / cases, 4) if cases else None,
            "p50_latency_s": _round(p50), "p95_latency_s": _round(p95),
            "unsupervised_high_risk": unsupervised, "per_class": per_class,
            "received_per_hour": [(since + timedelta(hours=i), hours.get(since + timedelta(hours=i), 0))
                                  for i in range(24)],
        }

    def _rows(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        return self.views.execute(sql, params)


class _RecordedModes:
    """The modes as the policy actor reported them, where the gates expect an AutonomyStore."""

    def __init__(self, modes: list[ClassMode]) -> None:
        self._modes = modes

    def classes(self, config: PolicyConfig | None = None) -> list[ClassMode]:
        return self._modes


def _retried(read: Callable[..., Any], *args: Any) -> Any:
    """Run `read`; a file removed while it was listed (a compaction finishing) makes DuckDB fail
    with an I/O error, so it is run again, three times in all. SQL errors become TraceError."""
    for attempt in range(3):
        try:
            return read(*args)
        except duckdb.IOException as err:
            if attempt == 2:
                raise TraceError(f"cannot read the trace store: {err}") from err
            time.sleep(0.05)
        except duckdb.Error as err:
            raise TraceError(f"trace query failed: {err}") from err
    raise AssertionError("unreachable")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
