"""A real, throwaway PostgreSQL server for the tests: Debian's `postgresql` package (installed by
scripts/setup.sh), an unprivileged cluster in a temp folder on a free port, removed afterwards.

PostgreSQL refuses to run as root: as root the cluster is created and run as `nobody`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_USER = "opsagent"


def find_bin() -> Path | None:
    """The folder of initdb and pg_ctl, newest major version first (None: not installed)."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_major, reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found and shutil.which("pg_ctl") else None


def _major(path: str) -> int:
    try:
        return int(Path(path).parent.name)
    except ValueError:
        return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl start in a temp folder; `url(db)` for a database on it; `stop()` removes it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="opsagent-pg-", dir="/tmp"))  # not TMPDIR: nobody must reach it
        self.data = self.root / "data"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:  # postgres will not run as root
            os.chown(self.root, 65534, 65534)
            self._as = ["runuser", "-u", "nobody", "--"]
        self._run("initdb", "-D", str(self.data), "-U", _USER, "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        self._options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                         "-c max_connections=200 -c shared_buffers=32MB")
        self.start()
        self.databases = 0

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-o", self._options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")

    def halt(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data; `start` again. `fast`: sessions are cut;
        `immediate`: the server quits at once, as in a crash (the next start recovers from WAL)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self._as, str(self.bindir / tool), *args], capture_output=True,
                                text=True, cwd=self.root, timeout=120)
        if result.returncode != 0:
            log = (self.root / "log").read_text()[-2000:] if (self.root / "log").exists() else ""
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr[-2000:]} {log}")

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        """A URL on this server (trust authentication: a password is accepted, and ignored)."""
        user = f"{_USER}:{password}" if password else _USER
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """The URL of a new, empty database on this server."""
        import psycopg

        self.databases += 1
        name = f"{prefix}_{os.getpid()}_{self.databases}_{int(time.time() * 1000) % 10**8}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def pg_ctl(self, *args: str) -> None:
        self._run("pg_ctl", "-D", str(self.data), *args)

    def stop(self) -> None:
        """Stop the server if it runs (a test may have halted it) and remove its files."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def private_server() -> Iterator[PostgresServer]:
    """A server of one test's own, for tests that stop it (the session's must not go away under
    other tests); fails under CI=true when PostgreSQL is not installed, skips elsewhere. Use as a
    generator fixture body: `yield from private_server()`."""
    import pytest

    from opsagent.policy.state import forget_states

    bindir = find_bin()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed (run scripts/setup.sh)")
        pytest.skip("PostgreSQL is not installed")
    server = PostgresServer(bindir)
    try:
        yield server
    finally:
        forget_states()  # drop pooled connections to a server that is going away
        server.stop()
