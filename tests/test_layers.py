"""The import contracts of pyproject.toml (`[tool.importlinter]`, see ARCHITECTURE.md) hold for the
code, and really fail when broken: a scratch copy of the package with one deliberate violation per
contract is linted by the same command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import opsagent

PACKAGE = Path(opsagent.__file__).resolve().parent
PYPROJECT = PACKAGE / "pyproject.toml"
CONTRACTS = {c["id"]: c["name"] for c in tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]}
LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"

# one violation per contract: (file in the scratch copy, a line added to it, the contract it breaks)
VIOLATIONS = [
    ("tools/_scratch_upward.py", "from opsagent.agents import case\n", "layers"),
    ("policy/_scratch_ray.py", "import ray\n", "ray-in-cluster"),
    ("evals/_scratch_ray.py", "import ray\n", "ray-through-cluster"),
    ("agents/_scratch_vllm.py", "import vllm\n", "vllm-in-engine"),
    ("tools/platform/erp.py", "from opsagent.tools.platform import wms\n", "systems-independent"),
    ("policy/_scratch_b.py", "from opsagent.policy import _scratch_c\n", "no-cycles"),
    ("policy/_scratch_c.py", "from opsagent.policy import _scratch_b\n", "no-cycles"),
]


def _lint(config: Path, pythonpath: list[str], cwd: Path) -> tuple[dict[str, str], str]:
    """Run `lint-imports` on `config`; returns each contract's status by id, and the output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath), "COLUMNS": "400", "NO_COLOR": "1"}
    run = subprocess.run([sys.executable, "-c", LINT, str(config), "--no-cache"], cwd=cwd,
                         env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    status = {}
    for cid, name in CONTRACTS.items():
        found = re.search(rf"^{re.escape(name)} (KEPT|BROKEN)", out, flags=re.M)
        assert found, f"no verdict on contract {cid!r} in:\n{out}"
        status[cid] = found.group(1)
    assert (run.returncode == 0) == all(s == "KEPT" for s in status.values()), out
    return status, out


def test_the_code_keeps_every_import_contract() -> None:
    status, out = _lint(PYPROJECT, [p for p in sys.path if p], PACKAGE)
    assert status == dict.fromkeys(CONTRACTS, "KEPT"), out


def test_each_contract_fails_on_a_deliberate_violation(tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(PACKAGE, root / "opsagent", ignore=shutil.ignore_patterns(
        "tests", "docs", ".git", ".venv", "__pycache__", "*.whl", "traces", "state"))
    for rel, line, _ in VIOLATIONS:
        path = root / "opsagent" / rel
        path.write_text((path.read_text() if path.exists() else "") + line)
    status, out = _lint(root / "opsagent" / "pyproject.toml", [str(root)], root)
    broken = {cid for _, _, cid in VIOLATIONS}
    assert {cid for cid, s in status.items() if s == "BROKEN"} == broken, out
    assert broken == set(CONTRACTS)  # every contract is shown to bite
    for rel, _, _ in VIOLATIONS:  # the copy was linted, not the installed package
        assert rel.removesuffix(".py").rsplit("/", 1)[-1] in out, out


def test_importing_the_eval_runner_does_not_import_ray() -> None:
    """Scoring, add-case and the catalogue import `evals.runner` without paying for Ray; Ray loads
    when a system starts."""
    code = "import sys, opsagent.evals.runner, opsagent.cli; print('ray' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
