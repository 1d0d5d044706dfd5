"""Few-shot retrieval: worked examples from the human-approved traces of a class."""

from __future__ import annotations

import shutil

import pytest

from opsagent.agents.approved_examples import approved_examples, to_example, with_approved_examples
from opsagent.agents.case import Case, ExceptionReport
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.prompts import build_messages, compact, observation_message
from opsagent.agents.tracing.records import VerdictEvent
from opsagent.agents.tracing.replay import load_case_trace, steps_of
from opsagent.agents.tracing.writer import TraceWriter
from opsagent.cluster.config import FewShotConfig, PlannerConfig
from tests.fakes.traced import TracedCases, trace_two_cases

BOOK = builtin_playbooks()["weight_mismatch"]


@pytest.fixture(scope="module")
def traced(platform, registry, tmp_path_factory) -> TracedCases:
    return trace_two_cases(platform, registry, tmp_path_factory.mktemp("traces"))


def _copy(traced: TracedCases, tmp_path):
    root = tmp_path / "traces"
    shutil.copytree(traced.root, root)
    return root


def _verdict(root, case, correct: bool) -> None:
    writer = TraceWriter(root)
    try:
        writer.export([VerdictEvent(case_id=case.case_id, exception_type=case.report.exception_type,
                                    autonomy_mode="autonomous", source="review", correct=correct,
                                    reason="checked by ops", actor="bob")])
    finally:
        writer.close()


def test_only_the_case_a_human_approved_is_an_example(traced):
    examples, found = approved_examples(traced.root, BOOK, limit=4)
    # the resolved case ran alone and nobody judged it; the escalated one had its write approved
    assert found.case_ids == [traced.approved.case_id] and found.approved_cases == 1
    (example,) = examples
    assert example.report == traced.approved.report
    steps = steps_of(load_case_trace(traced.root, traced.approved.case_id))
    tool_turns = [t for t in example.turns if t.output["tool"] != "finish"]
    assert [t.output["tool"] for t in tool_turns] == [s.tool for s in steps]
    assert [t.output["args"] for t in tool_turns] == [s.args for s in steps]
    # each observation is what the planner was shown after that step: the approved write's result
    assert [t.observation for t in tool_turns] == [observation_message(s, BOOK.observe) for s in steps]
    assert all(t.observation.startswith(f"Result of {t.output['tool']}") for t in tool_turns)


def test_the_case_ends_as_the_planner_ended_it(traced):
    (example,), _ = approved_examples(traced.root, BOOK, limit=1)
    last = example.turns[-1].output
    # the approved case escalated after its rebill ran (tests/fakes/traced.py): its example ends so
    assert (last["tool"], last["status"]) == ("finish", "escalated")
    assert traced.approved.status == "escalated" and last["reason"] == traced.approved.reason


def test_a_correct_review_admits_a_case_and_the_latest_verdict_counts(traced, tmp_path):
    root = _copy(traced, tmp_path)
    _verdict(root, traced.resolved, correct=True)
    _verdict(root, traced.approved, correct=False)  # overrides its approvals
    _, found = approved_examples(root, BOOK, limit=4)
    assert found.case_ids == [traced.resolved.case_id]
    _verdict(root, traced.approved, correct=True)
    _, found = approved_examples(root, BOOK, limit=4)
    # one of each outcome, newest first: the approved case (escalated) then the resolved one
    assert found.case_ids == [traced.approved.case_id, traced.resolved.case_id]
    _, found = approved_examples(root, BOOK, limit=1)
    assert found.case_ids == [traced.approved.case_id]


def test_a_run_with_a_denied_or_failed_step_is_no_example(traced):
    trace = load_case_trace(traced.root, traced.approved.case_id)
    assert to_example(trace, BOOK) is not None
    denied = trace.model_copy(deep=True)
    denied.actions[0]["decision"] = "deny"
    assert to_example(denied, BOOK) is None
    failed = trace.model_copy(deep=True)
    failed.actions[0]["error"] = "503 from the WMS"
    assert to_example(failed, BOOK) is None


def test_other_classes_and_empty_stores_give_no_examples(traced, tmp_path):
    other = builtin_playbooks()["missed_pickup"]
    assert approved_examples(traced.root, other, limit=2)[0] == []
    assert approved_examples(tmp_path / "nothing-yet", BOOK, limit=2)[0] == []
    assert approved_examples(traced.root, BOOK, limit=0)[0] == []


def test_retrieved_examples_follow_the_playbooks_own_in_the_prompt(traced):
    books, report = with_approved_examples(builtin_playbooks(), traced.root, per_class=2)
    book = books["weight_mismatch"]
    assert len(book.examples) == len(BOOK.examples) + 1 and book.examples[:-1] == BOOK.examples
    assert books["missed_pickup"] == builtin_playbooks()["missed_pickup"]
    assert {r.exception_type: r.case_ids for r in report}["weight_mismatch"] == [traced.approved.case_id]
    case = Case(report=ExceptionReport(exception_type="weight_mismatch", description="x",
                                       entities={"shipment_id": "SHP-1"}))
    messages = build_messages(book, [], case)
    first = compact(book.examples[-1].turns[0].output)
    at = [m.content for m in messages].index(first)
    assert messages[at - 1].content.startswith("New exception") and traced.approved.report.description \
        in messages[at - 1].content
    assert messages[-1].content.endswith("Description from ops: x")
    first, _ = with_approved_examples(builtin_playbooks(), traced.root, per_class=2, placement="first")
    assert first["weight_mismatch"].examples == [book.examples[-1], *BOOK.examples]


def test_the_few_shot_setting_is_validated():
    assert PlannerConfig.model_validate({"few_shot": {}}).few_shot == FewShotConfig(per_class=2)
    for bad in ({"per_class": 0}, {"per_class": 9}, {"traces": "t", "k": 2}):
        with pytest.raises(ValueError):
            PlannerConfig.model_validate({"few_shot": bad})
