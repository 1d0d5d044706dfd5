"""How sure the planner was of a step's decision, from the engine's token log-probabilities.

The decision of a step is its tool (and, for `finish`, its status: resolved or escalated); the
evidence and arguments around it are pinned or copied by the output grammar. Its confidence is
the probability the model gave that choice, token by token, among what the grammar allowed: the
product of the probabilities of the tokens that spell the tool name (and the status). The policy
can hold a write the model was unsure of for a human (`ClassPolicy.min_confidence`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from opsagent.agents.engines.base import TokenLogprob

_DECISION = re.compile(r'"(tool|status)"\s*:\s*"([^"]*)"')


def decision_confidence(text: str, tokens: Sequence[TokenLogprob] | None) -> float | None:
    """The probability of the step's tool (and finish status) in `text`; None if the engine gave
    no token log-probabilities or the output names no tool."""
    if not tokens:
        return None
    spans = [m.span(2) for m in _DECISION.finditer(text) if m.group(1) == "tool" or
             m.group(2) in ("resolved", "escalated")]
    if not spans:
        return None
    total, at = 0.0, 0
    for token in tokens:
        start, at = at, at + len(token.text)
        if any(start < end and at > begin for begin, end in spans):
            total += token.logprob
    return math.exp(total)
