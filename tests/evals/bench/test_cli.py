"""`opsagent bench` argument errors (nothing here starts an engine)."""

import pytest

from opsagent.cli import main
from opsagent.evals.bench.cli import cases_per_level


@pytest.mark.parametrize("argv,message", [
    (["--concurrency", "0"], "integers >= 1"),
    (["--concurrency", "1,x"], "comma-separated integers"),
    (["--cases", "-2"], "integers >= 1"),
    (["--phases", "system,warp"], "phases are"),
    (["--peer-tool-choice", "none"], "tool choices are"),
    (["--peer-kind", "react,reactive"], "peer kinds are"),
    (["--set", "s", "--classes", "weight_mismatch"], "not allowed with"),
])
def test_bad_arguments_exit_2_with_the_reason(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "latency", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_subcommand_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench"])
    assert exc.value.code == 2


def test_unknown_class_missing_set_and_bad_sizes_are_errors(tmp_path, capsys):
    assert main(["bench", "throughput", "--classes", "no_such_class", "--phases", "system"]) == 2
    assert "unknown exception class" in capsys.readouterr().err
    assert main(["bench", "latency", "--set", str(tmp_path / "none")]) == 2
    assert "not an eval set" in capsys.readouterr().err
    assert main(["bench", "latency", "--classes", "missed_pickup", "--per-class", "2",
                 "--concurrency", "1,4", "--cases", "1,2,3"]) == 2
    assert "one per level" in capsys.readouterr().err
    assert main(["bench", "latency", "--per-class", "0"]) == 2
    assert main(["bench", "latency", "--classes", "missed_pickup", "--per-class", "4",
                 "--resume", str(tmp_path)]) == 2
    assert "holds no earlier benchmark result" in capsys.readouterr().err


def test_cases_per_level_defaults_and_caps():
    assert cases_per_level([1, 4, 16, 32], None, 32) == {1: 4, 4: 8, 16: 32, 32: 32}
    assert cases_per_level([1, 4], [3], 10) == {1: 3, 4: 3}
    assert cases_per_level([1, 4], [2, 50], 10) == {1: 2, 4: 10}
    with pytest.raises(ValueError):
        cases_per_level([1, 4], [1, 2, 3], 10)
