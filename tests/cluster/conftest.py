"""A local Ray runtime for the cluster tests of one module, stopped afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from opsagent.cluster.runtime import start_ray, stop_ray


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    start_ray(num_cpus=2)
    yield
    stop_ray()
