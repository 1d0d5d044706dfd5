"""Fixtures shared by every test folder: one running sandbox platform for the session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from opsagent.policy.state import forget_states
from opsagent.tools.platform import Platform
from opsagent.tools.registry import ToolRegistry
from tests import guards
from tests.fakes import leftovers
from tests.postgres import PostgresServer, find_bin


_TMP: list[str] = []
_OLD_TMPDIR: list[str | None] = []


def pytest_configure(config: pytest.Config) -> None:
    """Point the temp folder of this run (and of the Ray and vLLM processes it starts) at a
    fresh, short folder that is removed at the end: they leave sockets and session folders."""
    path = tempfile.mkdtemp(prefix="oa-", dir="/tmp")
    _TMP.append(path)
    _OLD_TMPDIR.append(os.environ.get("TMPDIR"))
    os.environ["TMPDIR"] = path
    tempfile.tempdir = None
    leftovers.install()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = guards.ray_fixture_unmarked(items)
    if unmarked:
        raise pytest.UsageError("tests that use the ray_runtime fixture must be marked ray:\n  "
                                + "\n  ".join(unmarked))


def _watch_phase(item: pytest.Item) -> Iterator[None]:
    guards.install()
    guards.STARTED.clear()
    was_up = guards.ray_up()
    result = yield
    wrong = guards.unmarked(item, was_up)
    if wrong:
        pytest.fail(f"{item.nodeid} started " + "; ".join(wrong), pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _watch_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _watch_phase(item))


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _TMP:
        shutil.rmtree(path, ignore_errors=True)
    _TMP.clear()
    # a second pytest run in this process (mutmut runs several) must not use the removed folder
    old = _OLD_TMPDIR.pop() if _OLD_TMPDIR else None
    if old is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old
    tempfile.tempdir = None


def _no_unused_steps(start: int, what: str) -> None:
    unused = leftovers.unused_since(start)
    if unused:
        pytest.fail(f"{what} left scripted steps unused (the planner stopped early?):\n  "
                    + "\n  ".join(unused), pytrace=False)


@pytest.fixture(autouse=True, scope="session")
def _scripts_used_up_by_session() -> Iterator[None]:
    start = leftovers.mark()
    yield
    _no_unused_steps(start, "the session's fixtures")


@pytest.fixture(autouse=True, scope="module")
def _scripts_used_up_by_module() -> Iterator[None]:
    """Engines made by module-scoped fixtures are checked when the module's tests are done."""
    start = leftovers.mark()
    yield
    _no_unused_steps(start, "this module's fixtures")


@pytest.fixture(autouse=True)
def _scripts_used_up() -> Iterator[None]:
    """Every scripted engine made in a test or its fixtures must have used its whole script."""
    start = leftovers.mark()
    yield
    _no_unused_steps(start, "this test")


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    """A local Ray runtime for the Ray tests of one module, stopped afterwards."""
    from opsagent.cluster.runtime import start_ray, stop_ray

    start_ray(num_cpus=2)
    yield
    stop_ray()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session. Not installed: skipped on a workstation,
    a failure in CI (`CI=true`), naming what is missing."""
    bindir = find_bin()
    if bindir is None:
        why = ("PostgreSQL is not installed (no initdb/pg_ctl under /usr/lib/postgresql/*/bin): "
               "run scripts/setup.sh, or apt-get install postgresql")
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    server = PostgresServer(bindir)
    yield server
    forget_states()
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def systems_on_postgresql(request: pytest.FixtureRequest) -> Iterator[None]:
    """OPSAGENT_TEST_STATE=postgresql: every system a test starts without a `state:` of its own
    keeps its state in a new database on the session's PostgreSQL server instead of an SQLite
    file in its state folder (the stores' own tests run on both backends regardless)."""
    if os.environ.get("OPSAGENT_TEST_STATE", "sqlite") != "postgresql":
        yield
        return
    from opsagent.cluster.config import SystemConfig

    server = request.getfixturevalue("postgres_server")
    original, made = SystemConfig.state_url, {}

    def on_postgresql(config: SystemConfig) -> str:
        if config.state is not None:
            return original(config)
        key = str(config.state_dir.resolve())  # one database per state folder, as the file would be
        if key not in made:
            made[key] = server.new_database("sys")
        return made[key]

    SystemConfig.state_url = on_postgresql
    try:
        yield
    finally:
        SystemConfig.state_url = original


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty state database on each backend: an SQLite file, a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.sqlite'}"
    return request.getfixturevalue("postgres_server").new_database()


@pytest.fixture(scope="session")
def platform() -> Iterator[Platform]:
    with Platform(background=10) as running:
        yield running


@pytest.fixture(scope="session")
def registry(platform: Platform) -> ToolRegistry:
    return platform.registry()
