"""Fixtures shared by every test folder: one running sandbox platform for the session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from opsagent.tools.platform import Platform
from opsagent.tools.registry import ToolRegistry


_TMP: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Point the temp folder of this run (and of the Ray and vLLM processes it starts) at a
    fresh, short folder that is removed at the end: they leave sockets and session folders."""
    path = tempfile.mkdtemp(prefix="oa-", dir="/tmp")
    _TMP.append(path)
    os.environ["TMPDIR"] = path
    tempfile.tempdir = None


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _TMP:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    """A local Ray runtime for the Ray tests of one module, stopped afterwards."""
    from opsagent.cluster.runtime import start_ray, stop_ray

    start_ray(num_cpus=2)
    yield
    stop_ray()


@pytest.fixture(scope="session")
def platform() -> Iterator[Platform]:
    with Platform(background=10) as running:
        yield running


@pytest.fixture(scope="session")
def registry(platform: Platform) -> ToolRegistry:
    return platform.registry()
