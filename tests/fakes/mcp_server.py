"""A small MCP server for the tests, written with the official `mcp` SDK (`MCPServer`, mcp 2's
name for FastMCP): a parcel-hold desk.

Tools: `get_parcel` (read, `readOnlyHint`), `hold_parcel` (a write with the `dry_run` and
`idempotency_key` argument conventions; it counts the holds it applied in `holds`), `release_parcel` (a write with no annotations and no dry run), `whoami` (a read
that echoes the server's token, so tests can check it is redacted) and `diagnose` (logs the
token to stderr and fails with it in its error message).

Run over stdio: `python tests/fakes/mcp_server.py` (token from $PARCELS_TOKEN). Over streamable
HTTP, in-process: `with serve_http(token) as url: ...` (every request needs `Bearer <token>`).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

TOKEN_ENV = "PARCELS_TOKEN"
SCRIPT = os.path.abspath(__file__)  # run it with sys.executable for a stdio server


def build_server(token: str | None) -> MCPServer:
    """A fresh server with its own parcels: P-1 and P-2, neither on hold."""
    server = MCPServer("parcels", log_level="WARNING")
    parcels: dict[str, dict[str, Any]] = {pid: {"parcel_id": pid, "on_hold": False, "reason": None}
                                          for pid in ("P-1", "P-2")}
    done: dict[str, dict[str, Any]] = {}  # idempotency key -> the answer of the write it applied

    def parcel(parcel_id: str) -> dict[str, Any]:
        if parcel_id not in parcels:
            raise ToolError(f"unknown parcel {parcel_id}")
        return parcels[parcel_id]

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def get_parcel(parcel_id: str) -> dict:
        """Look up a parcel and whether it is on hold."""
        return dict(parcel(parcel_id))

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
    def hold_parcel(parcel_id: str, reason: str, dry_run: bool = False,
                    idempotency_key: str | None = None) -> dict:
        """Put a parcel on hold. With dry_run, only say what would change. A call repeating an
        idempotency key answers the first result and applies nothing."""
        if not dry_run and idempotency_key is not None and idempotency_key in done:
            return done[idempotency_key]
        before = dict(parcel(parcel_id))
        after = {**before, "on_hold": True, "reason": reason, "holds": before.get("holds", 0) + 1}
        answer = {"dry_run": dry_run, "before": before, "after": after}
        if not dry_run:
            parcels[parcel_id] = after
            if idempotency_key is not None:
                done[idempotency_key] = answer
        return answer

    @server.tool()
    def release_parcel(parcel_id: str) -> dict:
        """Release a held parcel to the carrier (no preview possible)."""
        current = parcel(parcel_id)
        if not current["on_hold"]:
            raise ToolError(f"parcel {parcel_id} is not on hold")
        parcels[parcel_id] = {**current, "on_hold": False, "reason": None}
        return dict(parcels[parcel_id])

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def whoami() -> dict:
        """Which credentials the server runs with (a careless diagnostic tool)."""
        return {"server": "parcels", "token": token}

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def diagnose() -> dict:
        """Check the server's upstream connection."""
        print(f"diagnose: upstream refused token {token}", file=sys.stderr, flush=True)  # a careless log line
        raise ToolError(f"upstream refused token {token}")

    return server


class _RequireBearer:
    """ASGI wrapper: every HTTP request must carry `Authorization: Bearer <token>`."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != self.expected:
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"missing or wrong bearer token"})
            return
        await self.app(scope, receive, send)


@contextmanager
def serve_http(token: str) -> Iterator[str]:
    """Serve a fresh server over streamable HTTP on 127.0.0.1; yields its MCP endpoint URL."""
    import uvicorn

    app = _RequireBearer(build_server(token).streamable_http_app(host="127.0.0.1"), token)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mcp-test-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the MCP test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


if __name__ == "__main__":
    build_server(os.environ.get(TOKEN_ENV)).run("stdio")
