"""Every request's identity, traced: one JSON line per request (who, which roles, what, the
answer, how long), to the `opsagent.access` logger and, if configured, a file.

The trace store has no record type for requests yet; until it does, this log is the record of
who read what (submissions, decisions and cancellations also carry the identity in the case and
approval records).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("opsagent.access")


class AccessLog:
    """Appends access records as JSON lines to `path` (None: the logger only)."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, sort_keys=True, default=str)
        logger.info(line)
        if self.path is not None:
            with self._lock, self.path.open("a", encoding="utf-8") as out:
                out.write(line + "\n")


class AccessLogMiddleware:
    """ASGI middleware writing one access record per HTTP request, before its answer is sent."""

    def __init__(self, app: ASGIApp, *, log: AccessLog) -> None:
        self.app, self.log = app, log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, logged = time.perf_counter(), False
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex

        def write(status: int) -> None:
            nonlocal logged
            logged = True
            identity = scope.get("state", {}).get("identity")
            refused = scope.get("state", {}).get("refused")
            self.log.write({
                "at": datetime.now(UTC).isoformat(), "request_id": request_id,
                "method": scope["method"], "path": scope["path"],
                "query": scope.get("query_string", b"").decode("latin-1")[:512],
                "status": status,
                "identity": identity.name if identity else None,
                "roles": sorted(r.value for r in identity.roles) if identity else None,
                "kind": identity.kind if identity else None,
                **({"refused_token": refused} if refused else {}),
                "client": scope["client"][0] if scope.get("client") else None,
                "ms": round((time.perf_counter() - started) * 1000, 1),
            })

        async def logged_first(message: Message) -> None:
            if message["type"] == "http.response.start" and not logged:
                write(message["status"])  # recorded before the caller sees the answer
            await send(message)

        try:
            await self.app(scope, receive, logged_first)
        finally:
            if not logged:  # no answer was started: the server will send a 500
                write(500)
