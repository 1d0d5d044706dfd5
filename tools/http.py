"""Invoke a tool over HTTP. HTTP errors and transport failures come back as a ToolResult."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from opsagent.errors import ToolError
from opsagent.tools.spec import ToolResult, ToolSpec

# Answers worth sending again: the system failed or did not handle the request (or asks to come
# back). A 500 is retried too: a read is harmless, and a write goes again only with its
# idempotency key, so a system that applied it before failing answers the stored result.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Upper bound on attempts of one call, whatever a source asks for.
MAX_ATTEMPTS = 6
STALE_CONNECTION = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
"""Errors of a request on a connection the server closed before answering."""
MAX_STALE = 4


def build_request(
    spec: ToolSpec, base_url: str, args: dict[str, Any]
) -> tuple[str, dict[str, Any] | None, dict[str, Any]]:
    """The URL (path params filled, URL-quoted), JSON body and query parameters of a call;
    ToolError on a bad shape."""
    missing = [p for p in spec.path_params if args.get(p) is None]
    if missing:
        raise ToolError(f"{spec.name}: missing path parameter(s) {', '.join(missing)}")
    unknown = sorted(set(args) - set(spec.path_params) - set(spec.body_params) - set(spec.query_params))
    if unknown:
        raise ToolError(f"{spec.name}: unknown argument(s) {', '.join(unknown)}")
    path = spec.path
    for name in spec.path_params:
        path = path.replace("{" + name + "}", quote(str(args[name]), safe=""))
    body = {k: v for k, v in args.items() if k in spec.body_params}
    has_body = bool(spec.body_params) and spec.method != "GET"
    query = {k: _query_value(v) for k, v in args.items() if k in spec.query_params and v is not None}
    return base_url.rstrip("/") + path, (body if has_body else None), query


async def call_tool(
    client: httpx.AsyncClient,
    spec: ToolSpec,
    base_url: str,
    args: dict,
    *,
    idempotency_key: str | None = None,
    dry_run: bool = False,
    timeout: float = 10.0,
    headers: dict[str, str] | None = None,
    retries: int = 0,
    backoff_s: float = 0.2,
) -> ToolResult:
    """Call one tool. Raises ToolError only for programming errors (bad argument shape, dry run
    of a tool without dry-run support); every HTTP or transport failure is a ToolResult(ok=False).

    `headers` are sent as given (auth: the caller attaches them at call time). Errors carry the
    whole text the system answered; the executor redacts secrets from it, then cuts it. A transport
    failure or a 429/500/502/503/504 answer is sent again up to `retries` times, waiting `backoff_s`,
    then twice that, and so on: always for reads and dry runs, for writes only with an
    idempotency key (the system then applies a repeated write once). A 500, and an answer whose
    body claims to be JSON but does not parse, are retried the same way; at most MAX_ATTEMPTS
    sends in all. `ToolResult.attempts` says how many were made. A connection the server closed
    before answering (a pooled connection it had timed out: `STALE_CONNECTION`) is retried at
    once, under the same rule, up to `MAX_STALE` times without counting as an attempt: after a
    pause every pooled connection may be stale, and backing off would only age the next one.
    """
    if dry_run and not spec.supports_dry_run:
        raise ToolError(f"{spec.name} does not support dry runs")
    url, body, query = build_request(spec, base_url, args)
    sent_headers = {**(headers or {}), **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
    params = {**query, **({"dry_run": "true"} if dry_run else {})} or None
    may_retry = not spec.writes or dry_run or idempotency_key is not None
    started, t0 = datetime.now(UTC), time.perf_counter()
    attempt = 0

    def result(**fields: Any) -> ToolResult:
        return ToolResult(dry_run=dry_run, started_at=started, finished_at=datetime.now(UTC),
                          duration_ms=(time.perf_counter() - t0) * 1000, attempts=attempt, **fields)

    limit = min(retries + 1, MAX_ATTEMPTS)
    stale = 0
    while True:
        attempt += 1
        again = may_retry and attempt < limit
        try:
            response = await client.request(spec.method, url, json=body, headers=sent_headers,
                                            params=params, timeout=timeout)
        except httpx.TimeoutException:
            if again:
                await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
                continue
            return result(ok=False, status_code=None, body=None,
                          error=f"timed out after {timeout:g}s")
        except httpx.HTTPError as exc:
            if may_retry and isinstance(exc, STALE_CONNECTION) and stale < MAX_STALE:
                stale += 1  # a pooled connection the server had closed: again at once, not counted
                attempt -= 1
                continue
            if again:
                await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
                continue
            cause = str(exc) or "no detail"
            return result(ok=False, status_code=None, body=None,
                          error=f"{type(exc).__name__}: {cause}")
        if again and response.status_code in RETRY_STATUSES:
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
            continue
        payload, malformed = _payload(response)
        if malformed is not None:
            if again:
                await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
                continue
            return result(ok=False, status_code=response.status_code, body=None,
                          error=f"malformed JSON in an HTTP {response.status_code} answer: {malformed}")
        ok = response.is_success
        return result(ok=ok, status_code=response.status_code, body=payload,
                      error=None if ok else _error(response.status_code, payload))


def _query_value(value: Any) -> Any:
    """Query values as the server parses them: booleans as true/false, lists repeated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return [_query_value(v) for v in value]
    return value


def _payload(response: httpx.Response) -> tuple[Any, str | None]:
    """The body (JSON if it parses, else its text) and, for a body that says it is JSON but does
    not parse, why (None otherwise)."""
    if not response.content:
        return None, None
    try:
        return response.json(), None
    except ValueError as exc:
        if "json" in response.headers.get("content-type", "").lower():
            return response.text, f"{exc}; body starts {response.text!r}"  # redacted, then cut
        return response.text, None


def _error(status: int, payload: Any) -> str:
    """`HTTP 409: <detail>`, with FastAPI's validation errors summarised one per field."""
    detail = payload.get("detail", payload) if isinstance(payload, dict) else payload
    if isinstance(detail, list):
        detail = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:]) or 'request'}: {d.get('msg', d)}"
            if isinstance(d, dict) else str(d)
            for d in detail
        )
    text = str(detail) if detail not in (None, "") else "no detail"
    return f"HTTP {status}: {text}"  # whole: the executor redacts it, then cuts it
