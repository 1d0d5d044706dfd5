"""Typed trace records, the exporter interface, the durable trace writer, the Parquet exporter and
the DuckDB read side. The schema is documented in SCHEMA.md, the analysts' views in views.sql.

The names below load on first use, so `opsagent`'s command line can import `tracing.cli` without
paying for pyarrow and DuckDB.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsagent.agents.tracing.exporters import FanoutExporter, InMemoryExporter, TraceExporter
    from opsagent.agents.tracing.parquet import ParquetExporter
    from opsagent.agents.tracing.records import (
        RECORD_TYPES,
        SCHEMA_VERSION,
        ActionEvent,
        ApprovalEvent,
        CaseEvent,
        PlannerCallEvent,
        TraceEvent,
        new_event_id,
        utcnow,
    )
    from opsagent.agents.tracing.views import connect, create_views, query, views_sql
    from opsagent.agents.tracing.writer import Recovery, TraceWriter

_MODULES = {
    "exporters": ["FanoutExporter", "InMemoryExporter", "TraceExporter"],
    "parquet": ["ParquetExporter"],
    "records": ["RECORD_TYPES", "SCHEMA_VERSION", "ActionEvent", "ApprovalEvent", "CaseEvent",
                "PlannerCallEvent", "TraceEvent", "new_event_id", "utcnow"],
    "views": ["connect", "create_views", "query", "views_sql"],
    "writer": ["Recovery", "TraceWriter"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
