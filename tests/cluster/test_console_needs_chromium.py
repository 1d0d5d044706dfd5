"""Without chromium the console's browser tests are skipped on a developer's machine, saying so,
and fail the run under CI=true (so CI never passes without having driven the console)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["OPSAGENT_CHROMIUM"] = "/nonexistent/chromium"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                           "tests/cluster/test_console.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_missing_chromium_skips_locally_and_fails_in_ci():
    local = _run(None)
    assert local.returncode == 0, local.stdout[-2000:]
    assert "skipped" in local.stdout and "the console's browser tests cannot run" in local.stdout
    ci = _run("true")
    assert ci.returncode != 0, ci.stdout[-2000:]
    assert "CI=true and no chromium at /nonexistent/chromium" in ci.stdout
