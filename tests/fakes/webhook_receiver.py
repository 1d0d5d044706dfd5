"""A real HTTP server that receives webhooks: records each request, fails the first `fail_first`
with 500, or holds every request open until released (`hang`)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Received:
    def __init__(self, headers: dict[str, str], body: bytes, answered: int) -> None:
        self.headers, self.body, self.status = headers, body, answered

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self, *, fail_first: int = 0, hang: bool = False) -> None:
        self.fail_first, self.hang = fail_first, hang
        self.requests: list[Received] = []
        self.in_flight = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    receiver.in_flight += 1
                if receiver.hang:
                    receiver.release.wait(60)
                with receiver._lock:
                    receiver.in_flight -= 1
                    status = 500 if len(receiver.requests) < receiver.fail_first else 204
                    receiver.requests.append(Received(dict(self.headers.items()), raw, status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/opsagent"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def ok(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.status < 300]
