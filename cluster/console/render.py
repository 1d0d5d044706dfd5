"""Jinja2 rendering for the console (autoescaped), and the small helpers its templates use."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

HERE = Path(__file__).parent
STATIC = HERE / "static"

env = Environment(loader=FileSystemLoader(HERE / "templates"),
                  autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def render(request: Request, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = env.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status_code,
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                                 "Content-Security-Policy": "default-src 'self'; style-src 'self'; "
                                 "img-src 'self' data:; frame-ancestors 'none'"})


def pretty(value: Any) -> str:
    """JSON, indented, keys sorted."""
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def diff_rows(preview: Any) -> list[dict[str, Any]] | None:
    """A dry-run preview (`{"diff": {"before": {...}, "after": {...}}}`) as field rows, changed
    ones first; None if the preview has another shape (the template then shows its JSON)."""
    diff = preview.get("diff") if isinstance(preview, dict) else None
    if not isinstance(diff, dict):
        return None
    before, after = diff.get("before"), diff.get("after")
    if not isinstance(before, dict | None) or not isinstance(after, dict | None):
        return None
    before, after = before or {}, after or {}
    rows = [{"field": k, "before": before.get(k), "after": after.get(k),
             "changed": before.get(k) != after.get(k) or (k in before) != (k in after)}
            for k in sorted(set(before) | set(after))]
    return sorted(rows, key=lambda r: not r["changed"])


def when(value: datetime | None) -> str:
    """UTC time as HH:MM:SS, with the date if it is not today."""
    if value is None:
        return "–"
    value = value.astimezone(UTC)
    today = datetime.now(UTC).date()
    return value.strftime("%H:%M:%S" if value.date() == today else "%Y-%m-%d %H:%M:%S")


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def seconds(value: float | None) -> str:
    return "–" if value is None else (f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min")


env.filters.update(pretty=pretty, compact=compact, when=when, percent=percent, seconds=seconds)
env.globals.update(diff_rows=diff_rows)
