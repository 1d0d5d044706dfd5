"""A scripted planner engine for tests: replays fixed outputs and fails loudly on surprises."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from opsagent.agents.engines.base import GenerationRequest, GenerationResult, PlannerEngine, TokenLogprob
from opsagent.errors import UnexpectedEngineCall

ScriptStep = dict[str, Any] | str | Callable[[GenerationRequest], dict[str, Any] | str]


class ScriptedEngine(PlannerEngine):
    """Returns its script's outputs in order; an extra call or a leftover step is an error.

    A step is the planner's JSON output (a dict or raw text) or a function of the request that
    returns one, for tests that need to look at the prompt. Calls whose schema the output does
    not fit still return it: the planner, not the engine, must catch that.
    """

    def __init__(self, script: Iterable[ScriptStep], model: str = "scripted",
                 token_logprob: float | None = None) -> None:
        """`token_logprob`: report each output as one token of that log-probability (so the
        planner's decision confidence is its exp); None: no log-probabilities, like most servers."""
        self.model = model
        self.token_logprob = token_logprob
        self._script: deque[ScriptStep] = deque(script)
        self.requests: list[GenerationRequest] = []
        self.outputs: list[str] = []

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        if not self._script:
            raise UnexpectedEngineCall(
                f"scripted engine has no step left for request {request.request_id!r} "
                f"(call #{len(self.requests)}); last message: {request.messages[-1].content[:200]!r}"
            )
        step = self._script.popleft()
        if callable(step):
            step = step(request)
        text = step if isinstance(step, str) else json.dumps(step)
        self.outputs.append(text)
        now = datetime.now(UTC)
        prompt = sum(len(m.content.split()) for m in request.messages)
        return GenerationResult(
            text=text, model=self.model, prompt_tokens=prompt,
            completion_tokens=len(text.split()), finish_reason="stop",
            started_at=now, finished_at=now,
            tokens=None if self.token_logprob is None else [TokenLogprob(text=text, logprob=self.token_logprob)],
        )

    @property
    def remaining(self) -> int:
        return len(self._script)

    def assert_done(self) -> None:
        """Fail if the script still has steps nobody asked for."""
        if self._script:
            raise UnexpectedEngineCall(f"scripted engine has {len(self._script)} unused step(s)")
