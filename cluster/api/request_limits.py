"""Request limits: a sliding-window rate limit per caller (429) and a body size limit (413)."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsagent.errors import RateLimited, RequestTooLarge


class RateLimiter:
    """At most `requests` per `window_s` seconds per key (a token's identity, or the client
    address of unauthenticated calls). Kept per API replica, in memory."""

    def __init__(self, requests: int, window_s: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if requests < 1 or window_s <= 0:
            raise ValueError("a rate limit needs requests >= 1 and window_s > 0")
        self.requests, self.window_s = requests, window_s
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> None:
        """Count one request of `key`; RateLimited (with the seconds to wait) if over the limit."""
        now = self._clock()
        with self._lock:
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= self.requests:
                raise RateLimited(f"requests by {key} in {self.window_s:g} s", len(hits) + 1,
                                  self.requests, retry_after_s=hits[0] + self.window_s - now)
            hits.append(now)
            if len(self._hits) > 10_000:  # forget idle callers, so addresses cannot fill memory
                for idle in [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window_s]:
                    del self._hits[idle]


class BodySizeLimit:
    """ASGI middleware: a request body over the limit for its path is refused with 413, by its
    Content-Length up front or, without one, as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, *, limit: int, overrides: dict[str, int] | None = None) -> None:
        self.app, self.limit = app, limit
        self.overrides = overrides or {}

    def limit_for(self, path: str) -> int:
        return next((n for prefix, n in self.overrides.items() if path.startswith(prefix)), self.limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _reply(send, 400, "Content-Length must be a number of bytes")
                return
            if int(declared) > limit:
                await _reply(send, 413, str(RequestTooLarge("request body", int(declared), limit)))
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # FastAPI turns any other error raised while it reads a body into a 400
                    raise HTTPException(413, str(RequestTooLarge("request body", seen, limit)))
            return message

        await self.app(scope, limited, send)


async def _reply(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
