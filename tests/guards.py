"""Markers that mean what they say: a test that starts Ray must be marked `ray`, one that starts
vLLM `engine`, one that launches chromium `browser`. tests/conftest.py watches each test's set-up
and call and fails the test that starts one of them unmarked, naming what it started, so
`-m "not ray and not engine and not browser"` keeps starting none of them.

Watched: `ray.init` (patched once Ray is imported), Ray's own processes (GCS, raylet) being
started, `VllmEngine.start` (the in-process engine), any subprocess whose command
line runs vLLM (the OpenAI-compatible server) and Playwright's `BrowserType.launch`.
A test whose fixtures include `ray_runtime` must be marked `ray` whether or not it is the one that
starts it (checked at collection).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from typing import Any

import pytest

STARTED: list[tuple[str, str]] = []  # (marker, what) started during the current test
_patched: set[str] = set()


def _record(marker: str, what: str) -> None:
    STARTED.append((marker, what))


def _wrap(owner: Any, name: str, marker: str, what: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def watched(*args: Any, **kwargs: Any) -> Any:
        _record(marker, what)
        return original(*args, **kwargs)

    setattr(owner, name, watched)


def install() -> None:
    """Patch what can be patched without importing anything heavy (call before each test)."""
    if "popen" not in _patched:
        _patched.add("popen")
        init = subprocess.Popen.__init__

        @functools.wraps(init)
        def popen(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
            line = " ".join(map(str, args)) if isinstance(args, list | tuple) else str(args)
            if "vllm.entrypoints" in line or "vllm serve" in line:
                _record("engine", f"a vLLM server ({line[:80]})")
            elif "gcs_server" in line or "/raylet" in line:  # ray.init starts these, however imported
                _record("ray", "Ray (its GCS or raylet process)")
            init(self, args, *rest, **kwargs)

        subprocess.Popen.__init__ = popen  # type: ignore[method-assign]
    if "vllm" not in _patched:
        _patched.add("vllm")
        from opsagent.agents.engines.vllm_engine import VllmEngine

        _wrap(VllmEngine, "start", "engine", "the in-process vLLM engine")
    if "ray" not in _patched and "ray" in sys.modules:
        _patched.add("ray")
        _wrap(sys.modules["ray"], "init", "ray", "Ray (ray.init)")
    generated = sys.modules.get("playwright.sync_api._generated")
    if "browser" not in _patched and generated is not None:
        _patched.add("browser")
        _wrap(generated.BrowserType, "launch", "browser", "a browser (Playwright launch)")


def ray_up() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def unmarked(item: pytest.Item, ray_was_up: bool) -> list[str]:
    """What `item` started without the marker that says so."""
    started = list(STARTED)
    if not ray_was_up and ray_up():
        started.append(("ray", "Ray (up after the test)"))
    return sorted({f"{what} without @pytest.mark.{marker}" for marker, what in started
                   if item.get_closest_marker(marker) is None})


def ray_fixture_unmarked(items: list[pytest.Item]) -> list[str]:
    return [item.nodeid for item in items
            if "ray_runtime" in getattr(item, "fixturenames", ()) and item.get_closest_marker("ray") is None]


def in_ci() -> bool:
    import os

    return os.environ.get("CI", "").lower() in ("true", "1")


def require(present: bool, what: str) -> list[pytest.MarkDecorator]:
    """For a module's `pytestmark`: nothing when a real server or browser its tests need is here;
    when it is missing, a skip saying why on a developer's machine, and with CI=true a failure of
    the run instead (CI must run every test)."""
    if present:
        return []
    if in_ci():
        pytest.fail(f"CI=true and {what}", pytrace=False)
    return [pytest.mark.skipif(True, reason=f"{what} (with CI=true this fails the run)")]
