"""Run the four systems of record in-process on free loopback ports, for tests, evals and demos."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn
from fastapi import FastAPI

from opsagent.errors import ToolCallError
from opsagent.tools.platform import erp, tkt, tms, wms
from opsagent.tools.registry import ToolRegistry

SYSTEMS = {"wms": wms.create_app, "tms": tms.create_app, "erp": erp.create_app, "tkt": tkt.create_app}
# Per system, table -> columns that are time-, sequence- or free-text-dependent (scoring masks them).
VOLATILE = {"wms": wms.VOLATILE, "tms": tms.VOLATILE, "erp": erp.VOLATILE, "tkt": tkt.VOLATILE}
# Per system, tables that are commentary rather than state (scoring ignores them).
COMMENTARY = {"tkt": tkt.COMMENTARY}


class _Service:
    """One uvicorn server in a daemon thread, on a socket bound before start (no port race)."""

    def __init__(self, name: str, app: FastAPI, port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1, timeout_keep_alive=1)
        self.server = uvicorn.Server(config)  # signal handlers are only installed on the main thread
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"opsagent-{name}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


class Platform:
    """The four systems of record (WMS, TMS, ERP, ticketing), started on enter and stopped on exit.

    Data lives in `data_dir/<system>.sqlite` (a temporary folder, removed on exit, if none is
    given), so a second Platform on the same folder sees the same data. Systems found empty are
    seeded with `background` ordinary shipments (and their customers and invoices) from `seed`.
    `ports` (system -> port) binds those systems to fixed ports instead of free ones, so a fresh
    platform can take over the URLs of a stopped one.
    """

    def __init__(self, data_dir: Path | str | None = None, *, seed: int = 0, background: int = 25,
                 startup_timeout: float = 15.0, ports: dict[str, int] | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="opsagent-platform-") if data_dir is None else None
        self.data_dir = Path(self._tmp.name if self._tmp else data_dir)
        self.seed, self.background, self.startup_timeout = seed, background, startup_timeout
        self.ports = dict(ports or {})
        self.base_urls: dict[str, str] = {}
        self._services: list[_Service] = []

    def start(self) -> Platform:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for name, create_app in SYSTEMS.items():
            service = _Service(name, create_app(self.data_dir / f"{name}.sqlite"), self.ports.get(name, 0))
            self._services.append(service)
            service.start()
            self.base_urls[name] = service.url
        try:
            self._wait_ready()
            from opsagent.tools.platform.scenarios import seed_background

            if self.background and self.is_empty():
                seed_background(self.base_urls, count=self.background, seed=self.seed)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for service in self._services:
            service.stop()
        self._services.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def registry(self) -> ToolRegistry:
        """Every tool the systems expose, read from their OpenAPI documents."""
        return ToolRegistry.from_services(self.base_urls)

    def digest(self, system: str) -> dict:
        """The system's state digest and per-table row counts."""
        return httpx.get(f"{self.base_urls[system]}/_admin/digest", timeout=10).raise_for_status().json()

    def snapshot(self, system: str) -> dict:
        """Every row of every table of the system (for scoring end states)."""
        return httpx.get(f"{self.base_urls[system]}/_admin/snapshot", timeout=10).raise_for_status().json()

    def is_empty(self) -> bool:
        return all(self.digest(s)["counts"].get("shipments", 0) == 0 for s in self.base_urls)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = dict(self.base_urls)
        with httpx.Client(timeout=1.0) as client:
            while pending:
                for name, url in list(pending.items()):
                    try:
                        if client.get(f"{url}/openapi.json").status_code == 200:
                            pending.pop(name)
                    except httpx.HTTPError:
                        pass
                if pending and time.monotonic() > deadline:
                    raise ToolCallError(f"platform services did not start: {', '.join(pending)}")
                if pending:
                    time.sleep(0.05)

    def __enter__(self) -> Platform:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def sandbox_registry() -> ToolRegistry:
    """The sandbox systems' tools, read from their OpenAPI documents by starting an empty platform
    for a moment (no tool is called; the URLs point at services that are gone afterwards). For
    commands that need tool schemas offline: what-if, tools list, autonomy compare."""
    with Platform(background=0) as platform:
        return platform.registry()

