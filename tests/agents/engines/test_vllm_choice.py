"""`VllmEngine.choose` on the real engine and the embedded model: the candidate distribution the
planner decides by, without decoding a token."""

from __future__ import annotations

import asyncio
import math

import pytest

from opsagent.agents.engines.base import ChatMessage, ChoiceRequest, GenerationRequest
from opsagent.agents.engines.vllm_engine import VllmEngine, VllmEngineConfig
from opsagent.errors import EngineError

pytestmark = pytest.mark.engine

ASK = [ChatMessage(role="system", content="Answer with one JSON object."),
       ChatMessage(role="user", content="Which system holds the carrier's billed weight? "
                   'Reply {"tool": "tms_get_shipment"} for the carrier (TMS), '
                   '{"tool": "wms_get_shipment"} for the warehouse (WMS).'),
       ChatMessage(role="assistant", content='{"tool":"tms_get_shipment"}'),
       ChatMessage(role="user", content="And which one holds the warehouse's scanned weight?")]
OPTIONS = ['{"tool":"tms_get_shipment"}', '{"tool":"tms_open_weight_dispute"}',
           '{"tool":"wms_get_shipment"}', '{"tool":"finish"}']


@pytest.fixture(scope="module")
def engine():
    loop = asyncio.new_event_loop()
    vllm = VllmEngine(VllmEngineConfig(max_model_len=2048))
    loop.run_until_complete(vllm.start())
    yield loop, vllm
    loop.run_until_complete(vllm.close())
    loop.close()


def _choose(engine, method, options=OPTIONS, messages=ASK):
    loop, vllm = engine
    return loop.run_until_complete(vllm.choose(ChoiceRequest(
        request_id=f"t-{method}-{len(options)}", messages=messages, options=options, method=method)))


def test_branch_gives_a_distribution_over_every_option_in_one_pass_per_branch_point(engine):
    result = _choose(engine, "branch")
    assert len(result.probabilities) == 4 and math.isclose(sum(result.probabilities), 1.0, rel_tol=1e-6)
    assert all(0 < p < 1 for p in result.probabilities)
    # the options part after `"tool":"` (t / w / finish) and again after `tms_` (get / open)
    assert result.requests == 2 and result.prompt_tokens > 0
    assert result.index == max(range(4), key=result.probabilities.__getitem__)


def test_branch_follows_the_distribution_constrained_decoding_samples_from(engine):
    """Greedy decoding under a grammar allowing exactly the options takes, where they part first,
    the branch with the most probability: the group of options the branch scores put first."""
    loop, vllm = engine
    chosen = _choose(engine, "branch")
    generated = loop.run_until_complete(vllm.generate(GenerationRequest(
        request_id="t-greedy", messages=ASK, json_schema={"enum": [{"tool": o[9:-2]} for o in OPTIONS]},
        max_tokens=20)))
    assert generated.text in OPTIONS, generated.text
    groups: dict[str, float] = {}
    for option, p in zip(OPTIONS, chosen.probabilities, strict=True):
        groups[option[9]] = groups.get(option[9], 0.0) + p  # t(ms_...) / w(ms_...) / f(inish)
    assert generated.text[9] == max(groups, key=groups.__getitem__), (generated.text, groups)


def test_score_ranks_by_whole_option_likelihood(engine):
    result = _choose(engine, "score")
    assert math.isclose(sum(result.probabilities), 1.0, rel_tol=1e-6) and result.requests == 4
    again = _choose(engine, "score")  # the options' blocks are now cached: scored again without the cache
    assert again.index == result.index
    assert again.probabilities == pytest.approx(result.probabilities, abs=1e-3)


def test_an_option_that_is_a_prefix_of_another_is_refused(engine):
    with pytest.raises(EngineError, match="prefix of another"):
        _choose(engine, "branch", options=['{"tool":"finish', '{"tool":"finish_now'])
