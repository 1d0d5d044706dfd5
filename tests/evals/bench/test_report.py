from datetime import UTC, datetime

import pytest

from opsagent.errors import InputError
from opsagent.evals.bench.report import HEADER, render, targets, write_section
from opsagent.evals.bench.run import BenchResult, LevelResult, PeerLevel, level_instances
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


def test_peers_sit_beside_opsagent_with_speed_and_correctness_targets():
    def peer(kind, choice, p50, rate, correct):
        return PeerLevel(kind=kind, tool_choice=choice, concurrency=1, cases=4, wall_s=10.0, cases_per_s=rate,
                         latency=Summary(n=4, p50=p50), correct=correct, finished=4, rows=[])

    result = BenchResult(started_at=datetime.now(UTC), command="opsagent bench", instances=4,
                         classes=["missed_pickup"], levels=[_level(1, 2.0, 0.5)],
                         peer=[peer("react", "auto", 3.0, 0.3, 0), peer("structured", "json_schema", 5.0, 0.2, 4)])
    found = {t.name: t for t in targets(result, "missed_pickup")}
    assert found["p50 latency / peer's (structured) at concurrency 1"].measured == pytest.approx(0.4)
    assert found["throughput / peer's (structured) at concurrency 1"].met is True
    assert found["share correct − peer's (structured) at concurrency 1"].measured == pytest.approx(-0.25)
    assert found["share correct − peer's (structured) at concurrency 1"].met is False
    assert found["share correct − peer's (ReAct auto) at concurrency 1"].met is True
    text = render(result, title="opsagent bench throughput", two_step_class="missed_pickup")
    assert text.count("| opsagent | - | 1 |") == 1  # once per level, however many peers
    assert "| LangGraph ReAct | tool_choice auto | 1 |" in text
    assert "| LangGraph structured | response_format json_schema | 1 | 4 | 5.00 |" in text


def test_an_earlier_result_without_peer_kinds_still_loads():
    old = {"tool_choice": "auto", "concurrency": 1, "cases": 1, "wall_s": 1.0, "cases_per_s": 1.0,
           "latency": {"n": 1}, "correct": 0, "finished": 0, "rows": []}
    assert PeerLevel.model_validate(old).label == "ReAct auto"
