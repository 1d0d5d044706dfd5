"""The planner: turns a case into its next step with one constrained engine call."""

from __future__ import annotations

import hashlib
import json
import uuid

import jsonschema

from pydantic import BaseModel, Field, ValidationError

from opsagent.agents.case import Case
from opsagent.agents.confidence import decision_confidence
from opsagent.agents.engines.base import ChatMessage, GenerationRequest, GenerationResult, PlannerEngine
from opsagent.agents.playbooks import Playbook
from opsagent.agents.prompts import build_messages
from opsagent.agents.prompts import compact
from opsagent.agents.step_schema import FINISH, PlannedStep, step_schema
from opsagent.errors import ConfigError, PlannerOutputError
from opsagent.tools.registry import ToolRegistry


class PlannerTurn(BaseModel):
    """One planner turn: the parsed step (None if unusable) and the engine's accounting
    (`generation` is None when the playbook decided without the model)."""

    step: PlannedStep | None
    error: str | None = None
    generation: GenerationResult | None = None
    prompt_digest: str | None = None
    messages: list[ChatMessage] | None = Field(None, description="The prompt, when the model was called.")
    confidence: float | None = Field(
        None, description="The model's probability of the step's tool and finish status "
        "(`agents.confidence`); None when the engine gives no log-probabilities or no model was called.")


class Planner:
    """Builds the prompt and schema for a case, calls the engine, parses the step."""

    def __init__(
        self, engine: PlannerEngine, playbooks: dict[str, Playbook], registry: ToolRegistry,
        *, max_tokens: int = 160,
    ) -> None:
        self.engine = engine
        self.playbooks = playbooks
        self.registry = registry
        self.max_tokens = max_tokens

    def playbook(self, exception_type: str) -> Playbook:
        try:
            return self.playbooks[exception_type]
        except KeyError:
            raise ConfigError(f"no playbook for exception class {exception_type!r}") from None

    async def warm_up(self, allowed_tools: dict[str, list[str]]) -> int:
        """Compute each class's shared prompt prefix once, so that the first wave of concurrent
        cases reuses it from vLLM's prefix cache instead of each computing its own copy.
        Returns the number of classes warmed."""
        warmed = 0
        for exception_type, allowed in allowed_tools.items():
            playbook = self.playbooks.get(exception_type)
            if playbook is None or not playbook.examples:
                continue
            case = Case(case_id="warm-up", report=playbook.examples[0].report)
            await self.engine.generate(self._request(playbook, case, allowed, max_tokens=1))
            warmed += 1
        return warmed

    def _request(self, playbook: Playbook, case: Case, allowed_tools: list[str],
                 max_tokens: int) -> GenerationRequest:
        tools = [self.registry.get(n) for n in allowed_tools if n in self.registry]
        return GenerationRequest(
            request_id=f"{case.case_id}-{len(case.steps)}-{uuid.uuid4().hex[:6]}",
            messages=build_messages(playbook, tools, case),
            json_schema=step_schema(playbook, tools, case),
            max_tokens=max_tokens,
        )

    async def plan(self, case: Case, allowed_tools: list[str]) -> PlannerTurn:
        """Ask the engine for the next step of `case`, offering only `allowed_tools`."""
        playbook = self.playbook(case.report.exception_type)
        if (done := _concluding_step(playbook, case)) is not None:
            return PlannerTurn(step=done)
        request = self._request(playbook, case, allowed_tools, self.max_tokens)
        messages = request.messages
        digest = hashlib.sha256(
            json.dumps([m.model_dump() for m in messages]).encode()
        ).hexdigest()[:16]
        generation = await self.engine.generate(request)
        try:
            step = parse_step(generation, request.json_schema)
        except PlannerOutputError as exc:
            return PlannerTurn(step=None, error=str(exc), generation=generation, prompt_digest=digest,
                               messages=messages)
        return PlannerTurn(step=step, generation=generation, prompt_digest=digest, messages=messages,
                           confidence=decision_confidence(generation.text, generation.tokens))


def _concluding_step(playbook: Playbook, case: Case) -> PlannedStep | None:
    """`finish` once the last step was one of the playbook's concluding tools and succeeded:
    `resolve_on` resolves the case, `escalate_on` (a hand-off to humans) escalates it."""
    last = case.steps[-1] if case.steps else None
    if last is None or not last.done:
        return None
    if last.tool in playbook.resolve_on:
        status = "resolved"
    elif last.tool in playbook.escalate_on:
        status = "escalated"
    else:
        return None
    return PlannedStep(evidence=last.evidence, tool=FINISH, status=status,
                       reason=f"{last.tool} succeeded: {compact(last.result)[:200]}")


def parse_step(generation: GenerationResult, schema: dict | None = None) -> PlannedStep:
    """Parse the engine's text into a step. A truncated or malformed output, or one outside the
    schema it was asked for (an engine that ignored the grammar), is an error."""
    if generation.finish_reason not in ("stop", "eos"):
        raise PlannerOutputError(
            f"planner output cut off ({generation.finish_reason}) after "
            f"{generation.completion_tokens} tokens: {generation.text[:200]!r}"
        )
    try:
        data = json.loads(generation.text)
        if schema is not None:
            jsonschema.validate(data, schema)
        return PlannedStep.model_validate(data)
    except jsonschema.ValidationError as exc:
        raise PlannerOutputError(f"planner output is outside its schema: {exc.message}") from exc
    except (json.JSONDecodeError, ValidationError) as exc:
        raise PlannerOutputError(f"planner output is not a step: {exc}") from exc
