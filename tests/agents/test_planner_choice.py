"""Choice decoding: the model picks among candidates built in code; only free arguments are generated."""

from __future__ import annotations

import asyncio
import math

from opsagent.agents.engines import ScriptedEngine
from opsagent.agents.engines.base import ChoiceRequest, GenerationRequest
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.records import PlannerCallEvent
from opsagent.evals.gold import gold_step
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine
from tests.agents.test_candidates import _weight_case


def _books():
    """The shipped playbooks without their SOP rules: these tests are about the model's choice,
    which weight_mismatch's rule would otherwise make alone once the scale check passed."""
    return {k: b.model_copy(update={"rules": []}) for k, b in builtin_playbooks().items()}


def _allowed(registry):
    return PolicyEngine(load_default_policy(), registry).allowed_tools("weight_mismatch")


def test_the_model_chooses_among_the_candidates_and_nothing_is_decoded(registry):
    step = {"tool": "tms_open_weight_dispute", "args": {"reason": "ignored: the note is composed"}}
    engine = ScriptedEngine([step], token_logprob=math.log(0.8))
    turn = asyncio.run(Planner(engine, _books(), registry).plan(_weight_case(), _allowed(registry)))
    engine.assert_done()
    (request,) = engine.requests
    assert isinstance(request, ChoiceRequest) and request.method == "branch"
    assert turn.step.tool == "tms_open_weight_dispute" and turn.decided_by == "model"
    assert turn.step.args["reason"] == "Scan 12.7 kg on a checked scale, billed 18.3 kg."
    assert turn.generation.completion_tokens == 0 and turn.generation.text.startswith('{"evidence"')
    assert turn.confidence == 0.8
    probabilities = {c.decision: c.probability for c in turn.candidates}
    assert probabilities["tms_open_weight_dispute"] == 0.8 and math.isclose(sum(probabilities.values()), 1.0)


def test_a_free_argument_is_generated_after_the_choice_under_its_own_grammar(registry):
    books = _books()
    books["weight_mismatch"] = books["weight_mismatch"].model_copy(update={"notes": {}})
    step = {"tool": "tms_open_weight_dispute", "args": {"reason": "Scale passed; disputing."}}
    engine = ScriptedEngine([step])
    turn = asyncio.run(Planner(engine, books, registry).plan(_weight_case(), _allowed(registry)))
    engine.assert_done()
    choice, fill = engine.requests
    assert isinstance(choice, ChoiceRequest) and isinstance(fill, GenerationRequest)
    assert fill.target == "args.reason" and fill.prefix.endswith('"claimed_weight_kg":12.7,"reason":')
    assert fill.regex.startswith('"') and fill.messages == choice.messages
    assert turn.step.args == {"shipment_id": "SHP-1", "claimed_weight_kg": 12.7,
                              "reason": "Scale passed; disputing."}


def test_a_step_that_is_none_of_the_candidates_is_an_error_not_a_step(registry):
    bad = {"tool": "tms_withdraw_weight_dispute", "args": {"dispute_id": "WD-1"}}
    engine = ScriptedEngine([bad])
    turn = asyncio.run(Planner(engine, _books(), registry).plan(_weight_case(), _allowed(registry)))
    assert turn.step is None and "none of the candidates" in turn.error


def test_an_engine_that_cannot_choose_writes_the_whole_step(registry):
    class WholeSteps(ScriptedEngine):
        supports_choice = False

    engine = WholeSteps([gold_step])
    turn = asyncio.run(Planner(engine, _books(), registry).plan(_weight_case(), _allowed(registry)))
    engine.assert_done()
    assert isinstance(engine.requests[0], GenerationRequest) and engine.requests[0].json_schema["anyOf"]
    assert turn.step.tool == "tms_open_weight_dispute" and turn.candidates is None


def test_choices_and_rule_steps_are_traced_with_their_candidates(harness, instance):
    h = harness([gold_step] * 3)
    case = h.run(instance(scale_ok=True))
    h.engine.assert_done()
    calls = h.traces.of_type(PlannerCallEvent)
    assert [c.decided_by for c in calls] == ["model", "model", "model", "rule"]
    assert case.planner_calls == 3  # the concluding finish called no model
    first = calls[0].candidates
    assert [c["decision"] for c in first] == ["wms_get_shipment", "finish:escalated"]
    # the SOP rule (scale check passed) withholds the rescan
    assert [c["decision"] for c in calls[1].candidates] == ["tms_get_shipment", "finish:escalated"]
    assert calls[-1].model == "rule" and calls[-1].prompt_tokens == 0
