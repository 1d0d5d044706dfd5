"""What the reading commands print: a plain aligned table (`format_table`), or with `--json` one JSON
document on stdout (pydantic records and dates as JSON, rows of a query as objects), so scripts
parse it with `jq` or `json.loads`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel


def jsonable(value: Any) -> Any:
    """`value` with pydantic models, dates, decimals, sets and tuples made JSON-ready."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def rows_as_objects(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, (jsonable(v) for v in row), strict=True)) for row in rows]


def print_json(value: Any) -> int:
    """Print `value` as indented JSON; returns 0 (the exit code)."""
    json.dump(jsonable(value), sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")
    return 0


def format_table(columns: list[str], rows: list[tuple]) -> str:
    """A plain aligned text table."""
    cells = [columns] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
