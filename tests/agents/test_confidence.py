"""The planner's decision confidence: the probability of the tokens that spell its choice."""

from __future__ import annotations

import math

import pytest

from opsagent.agents.confidence import decision_confidence
from opsagent.agents.engines.base import TokenLogprob


def _tokens(*pairs: tuple[str, float]) -> list[TokenLogprob]:
    return [TokenLogprob(text=t, logprob=lp) for t, lp in pairs]


def test_only_the_tokens_of_the_tool_name_count() -> None:
    tokens = _tokens(('{"evidence":{"scale_check":"', 0.0), ("failed", math.log(0.2)), ('"},"tool":"', 0.0),
                     ("tkt", math.log(0.9)), ("_assign", math.log(0.5)), ("_ticket", 0.0),
                     ('","args":{"team":"', 0.0), ("billing", math.log(0.1)), ('"}}', 0.0))
    text = "".join(t.text for t in tokens)
    assert decision_confidence(text, tokens) == pytest.approx(0.45)


def test_a_finish_counts_its_status_too_and_a_token_straddling_the_name_counts() -> None:
    tokens = _tokens(('{"evidence":{},"tool":"fin', math.log(0.8)), ('ish","status":"', 0.0),
                     ("escal", math.log(0.5)), ('ated","reason":"lost"}', math.log(0.9)))
    text = "".join(t.text for t in tokens)
    assert decision_confidence(text, tokens) == pytest.approx(0.8 * 0.5 * 0.9)


def test_no_log_probabilities_or_no_tool_means_unknown() -> None:
    assert decision_confidence('{"tool":"x"}', None) is None
    assert decision_confidence('{"tool":"x"}', []) is None
    assert decision_confidence('{"evidence":{}}', _tokens(('{"evidence":{}}', -1.0))) is None
