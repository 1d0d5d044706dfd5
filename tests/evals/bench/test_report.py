from datetime import UTC, datetime

import pytest

from opsagent.errors import InputError
from opsagent.evals.bench.report import HEADER, render, targets, write_section
from opsagent.evals.bench.run import BenchResult, LevelResult, level_instances
from opsagent.evals.bench.stats import Summary
from opsagent.evals.catalogue import make


def _level(c, p50, rate):
    return LevelResult(concurrency=c, cases=4, wall_s=10.0, cases_per_s=rate, latency=Summary(n=4, p50=p50),
                       by_class={"missed_pickup": Summary(n=2, p50=p50)}, statuses={"resolved": 4}, correct=3,
                       breakdowns=[])


def test_targets_compare_levels():
    result = BenchResult(started_at=datetime.now(UTC), command="opsagent bench", instances=4,
                         classes=["missed_pickup"], levels=[_level(1, 8.0, 0.1), _level(16, 30.0, 0.45)])
    found = {t.name: t for t in targets(result, "missed_pickup")}
    assert found["p50 of missed_pickup at concurrency 1 (s)"].met is False
    scaling = found["throughput at 16 / throughput at 1"]
    assert scaling.measured == pytest.approx(4.5) and scaling.met is True
    text = render(result, title="opsagent bench throughput", two_step_class="missed_pickup")
    assert "| 16 | 4 | 30.00 |" in text and "opsagent bench" in text


def test_write_section_keeps_other_sections(tmp_path):
    doc = tmp_path / "docs" / "benchmarks.md"
    write_section(doc, "latency", "## first\n")
    assert doc.read_text().startswith(HEADER)
    doc.write_text(doc.read_text() + "\n## Trace writer\nkeep me\n")
    write_section(doc, "latency", "## second\n")
    write_section(doc, "throughput", "## third\n")
    text = doc.read_text()
    assert "## first" not in text and text.count("## second") == 1 and "keep me" in text
    assert text.index("## second") < text.index("keep me") < text.index("## third")


def test_level_instances_interleave_classes_and_refuse_a_small_set():
    insts = make("missed_pickup", seed=3, count=3) + make("weight_mismatch", seed=3, count=3)
    picked = level_instances(insts, 4)
    assert [i.exception_type for i in picked] == ["missed_pickup", "weight_mismatch"] * 2
    assert len({i.instance_id for i in level_instances(insts, 6)}) == 6
    with pytest.raises(InputError, match="at least 7"):
        level_instances(insts, 7)
