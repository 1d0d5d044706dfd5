"""Typed trace records, the exporter interface, the Parquet exporter and the DuckDB read side."""

from opsagent.agents.tracing.exporters import FanoutExporter, InMemoryExporter, TraceExporter
from opsagent.agents.tracing.parquet import ParquetExporter
from opsagent.agents.tracing.records import (
    RECORD_TYPES,
    ActionEvent,
    ApprovalEvent,
    CaseEvent,
    PlannerCallEvent,
    TraceEvent,
    utcnow,
)
from opsagent.agents.tracing.views import connect, create_views, query, views_sql

__all__ = [
    "RECORD_TYPES",
    "ActionEvent",
    "ApprovalEvent",
    "CaseEvent",
    "FanoutExporter",
    "InMemoryExporter",
    "ParquetExporter",
    "PlannerCallEvent",
    "TraceEvent",
    "TraceExporter",
    "connect",
    "create_views",
    "query",
    "utcnow",
    "views_sql",
]
