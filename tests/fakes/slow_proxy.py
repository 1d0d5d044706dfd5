"""A reverse proxy in front of the sandbox platform that answers every tool call `delay_s` late
and counts the calls it forwarded, so a test can load the executors with slow calls and check
that none was sent twice.

`slow_platform(platform, delay_s)` serves it on a free loopback port (uvicorn in a thread) and
yields a `SlowProxy`: `registry()` builds the tools on the proxied URLs; `calls` counts each
(method, path and query, idempotency key) forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from opsagent.tools.registry import ToolRegistry
from tests.fakes.local_actors import ThreadedServer

UNDELAYED = ("/openapi.json", "/_admin/")


class SlowProxy:
    def __init__(self, base_urls: dict[str, str], url: str) -> None:
        self.targets, self.url = base_urls, url
        self.calls: Counter[tuple[str, str, str | None]] = Counter()

    @property
    def base_urls(self) -> dict[str, str]:
        return {system: f"{self.url}/{system}" for system in self.targets}

    def registry(self) -> ToolRegistry:
        return ToolRegistry.from_services(self.base_urls)


def _app(proxy: SlowProxy, delay_s: float) -> Starlette:
    client = httpx.AsyncClient(timeout=60)

    async def forward(request: Request) -> Response:
        system, _, rest = request.path_params["path"].partition("/")
        if system not in proxy.targets:
            return Response(f"no system {system!r}", status_code=404)
        path = "/" + rest
        query = request.url.query
        if not any(path.endswith(p) or path.startswith(p) for p in UNDELAYED):
            proxy.calls[(request.method, f"{system}{path}?{query}",
                         request.headers.get("idempotency-key"))] += 1
            await asyncio.sleep(delay_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        target = proxy.targets[system] + path + (f"?{query}" if query else "")
        upstream = await client.request(request.method, target, headers=headers, content=await request.body())
        return Response(upstream.content, status_code=upstream.status_code,
                        media_type=upstream.headers.get("content-type"))

    return Starlette(routes=[Route("/{path:path}", forward,
                                   methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])


@contextlib.contextmanager
def slow_platform(platform: Any, delay_s: float) -> Iterator[SlowProxy]:
    holder = SlowProxy(dict(platform.base_urls), url="")
    server = ThreadedServer(_app(holder, delay_s))
    holder.url = server.url
    with server:
        yield holder
