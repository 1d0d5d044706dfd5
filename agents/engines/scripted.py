"""A scripted planner engine for tests: replays fixed outputs and fails loudly on surprises."""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from opsagent.agents.engines.base import (
    ChoiceRequest, ChoiceResult, GenerationRequest, GenerationResult, PlannerEngine, TokenLogprob,
)
from opsagent.errors import PlannerOutputError, UnexpectedEngineCall

ScriptStep = dict[str, Any] | str | Callable[[GenerationRequest | ChoiceRequest], dict[str, Any] | str]
_OPTION_FIELD = re.compile(r'"(tool|status)":"([^"]*)"')


class ScriptedEngine(PlannerEngine):
    """Returns its script's outputs in order; an extra call or a leftover step is an error.

    A step is the planner's JSON output (a dict or raw text) or a function of the request that
    returns one, for tests that need to look at the prompt. Calls whose schema the output does
    not fit still return it: the planner, not the engine, must catch that.

    `choose` takes one step too and picks the option with the step's tool (and finish status,
    and the most of its argument values); a step that fits no option is a `PlannerOutputError`,
    as an engine's output outside the grammar would be. The free arguments the planner then asks
    for (`GenerationRequest.target`) are answered from that step's arguments, without a step.
    """

    supports_choice = True

    def __init__(self, script: Iterable[ScriptStep], model: str = "scripted",
                 token_logprob: float | None = None) -> None:
        """`token_logprob`: report each output as one token of that log-probability (so the
        planner's decision confidence is its exp); None: no log-probabilities, like most servers."""
        self.model = model
        self.token_logprob = token_logprob
        self._script: deque[ScriptStep] = deque(script)
        self.requests: list[GenerationRequest | ChoiceRequest] = []
        self.outputs: list[str] = []
        self._chosen: dict[str, dict[str, Any]] = {}  # case and step -> the step chosen there
        self._checked = False

    def _next(self, request: GenerationRequest | ChoiceRequest) -> str:
        if not self._script:
            raise UnexpectedEngineCall(
                f"scripted engine has no step left for request {request.request_id!r} "
                f"(call #{len(self.requests)}); last message: {request.messages[-1].content[:200]!r}"
            )
        step = self._script.popleft()
        if callable(step):
            step = step(request)
        return step if isinstance(step, str) else json.dumps(step)

    async def choose(self, request: ChoiceRequest) -> ChoiceResult:
        self.requests.append(request)
        text = self._next(request)
        self.outputs.append(text)
        try:
            step = json.loads(text)
        except json.JSONDecodeError:
            raise PlannerOutputError(f"planner output is not a step (not JSON): {text[:200]!r}") from None
        best, best_score = None, -1
        for index, option in enumerate(request.options):
            fields = dict(_OPTION_FIELD.findall(option))
            if fields.get("tool") != step.get("tool") or fields.get("status", step.get("status")) != step.get("status"):
                continue
            score = sum(f'"{k}":{json.dumps(v, separators=(",", ":"))}' in option
                        for k, v in (step.get("args") or {}).items())
            if score > best_score:
                best, best_score = index, score
        if best is None:
            raise PlannerOutputError(f"planner output is outside its schema: {text[:200]!r} is none of the candidates")
        self._chosen[_turn_key(request.request_id)] = step
        while len(self._chosen) > 1000:  # a long soak: only recent turns can still be filled
            del self._chosen[next(iter(self._chosen))]
        now = datetime.now(UTC)
        chosen_p = 1.0 if self.token_logprob is None else math.exp(self.token_logprob)
        rest = (1.0 - chosen_p) / (len(request.options) - 1)
        return ChoiceResult(
            index=best, probabilities=[chosen_p if i == best else rest for i in range(len(request.options))],
            model=self.model, prompt_tokens=sum(len(m.content.split()) for m in request.messages),
            started_at=now, finished_at=now)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        if request.target and request.target.startswith("args."):
            chosen = self._chosen.get(_turn_key(request.request_id)) or {}
            value = (chosen.get("args") or {}).get(request.target.removeprefix("args."))
            if value is None:
                raise UnexpectedEngineCall(f"scripted step has no {request.target} to write "
                                           f"for request {request.request_id!r}")
            return self._result(request, json.dumps(value))
        text = self._next(request)
        self.outputs.append(text)
        return self._result(request, text)

    def _result(self, request: GenerationRequest, text: str) -> GenerationResult:
        now = datetime.now(UTC)
        prompt = sum(len(m.content.split()) for m in request.messages)
        return GenerationResult(
            text=text, model=self.model, prompt_tokens=prompt,
            completion_tokens=len(text.split()), finish_reason="stop",
            started_at=now, finished_at=now,
            tokens=None if self.token_logprob is None else [TokenLogprob(text=text, logprob=self.token_logprob)],
        )

    def fills(self, request: GenerationRequest) -> bool:
        """Whether `request` asks for a free argument of a step already chosen (answered from
        that step, without a step of the script)."""
        return bool(request.target) and _turn_key(request.request_id) in self._chosen

    @property
    def remaining(self) -> int:
        return len(self._script)

    @property
    def checked(self) -> bool:
        """Whether `assert_done` was called (whatever it found)."""
        return self._checked

    def extend(self, steps: Iterable[ScriptStep]) -> None:
        """Add steps at the end, e.g. the calls the next test of a shared fixture expects."""
        self._script.extend(steps)

    def assert_done(self) -> None:
        """Fail if the script still has steps nobody asked for."""
        self._checked = True
        if self._script:
            raise UnexpectedEngineCall(f"scripted engine has {len(self._script)} unused step(s) "
                                       f"after {len(self.outputs)} call(s)")


def _turn_key(request_id: str) -> str:
    """The planner's request ids are `<case>-<step>-<random>`: one planner turn per key."""
    return request_id.rsplit("-", 1)[0]
