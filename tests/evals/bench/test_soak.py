"""`opsagent bench load` in a reduced size: a steady-rate soak of the local cluster loses no case."""

from __future__ import annotations

import pytest

from opsagent.cli import main


@pytest.mark.ray
def test_a_short_soak_at_a_steady_rate_loses_no_case(capsys, tmp_path):
    report = tmp_path / "benchmarks.md"
    # a case cache smaller than the run: finished cases leave memory and are read back from the store
    assert main(["bench", "load", "--cases", "40", "--rate", "8", "--timeout", "120", "--case-cache", "10",
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "| lost cases | 0 |" in out
    assert report.read_text().startswith("# Benchmarks") and "| lost cases | 0 |" in report.read_text()


def test_bad_load_arguments_are_refused_before_anything_starts(capsys):
    assert main(["bench", "load", "--rate", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert main(["bench", "load", "--suspect-share", "2"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert main(["bench", "load", "--case-cache", "0"]) == 2
    assert "--case-cache must be >= 1" in capsys.readouterr().err
