"""Request limits: a sliding-window rate limit per caller (429) and a body size limit (413).

The rate limit is kept in memory per replica (`RateLimiter`) or, when several API replicas serve
one front door, in one SQLite file on the state volume they share (`SharedRateLimiter`), so a
caller gets the same limit whatever the replica count.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from fastapi import HTTPException
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsagent.errors import RateLimited, RequestTooLarge


class ApiLimits(BaseModel):
    """Request limits of one API replica."""

    model_config = {"extra": "forbid"}
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, description="Largest request body.")
    max_policy_bytes: int = Field(default=1_100_000, ge=1024,
                                  description="Largest body of PUT /v1/policy (a policy file).")
    requests_per_window: int = Field(default=600, ge=1,
                                     description="Requests one caller may make per window (429 past it).")
    window_s: float = Field(default=60.0, gt=0, description="The rate limit's window in seconds.")


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


class SharedRateLimiter:
    """`RateLimiter`'s rule, counted in one SQLite file for every replica (and process) that
    opens it: at most `requests` per `window_s` seconds per key, whole front door."""

    def __init__(self, path: str | Path, requests: int, window_s: float, *,
                 clock: Callable[[], float] = time.time) -> None:
        if requests < 1 or window_s <= 0:
            raise ValueError("a rate limit needs requests >= 1 and window_s > 0")
        self.requests, self.window_s = requests, window_s
        self._clock = clock  # wall time: the replicas' processes share it
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS hits (key TEXT NOT NULL, at REAL NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS hits_key ON hits (key, at)")
        self._lock = threading.Lock()
        self._count = 0

    def hit(self, key: str) -> None:
        """Count one request of `key`; RateLimited (with the seconds to wait) if over the limit."""
        now = self._clock()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seen, first = self._db.execute("SELECT count(*), min(at) FROM hits WHERE key = ? AND at > ?",
                                               (key, now - self.window_s)).fetchone()
                if seen >= self.requests:
                    raise RateLimited(f"requests by {key} in {self.window_s:g} s", seen + 1, self.requests,
                                      retry_after_s=first + self.window_s - now)
                self._db.execute("INSERT INTO hits VALUES (?, ?)", (key, now))
                self._count += 1
                if self._count % 500 == 0:  # forget old hits, so addresses cannot fill the file
                    self._db.execute("DELETE FROM hits WHERE at <= ?", (now - self.window_s,))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise


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
