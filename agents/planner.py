"""The planner: turns a case into its next step.

Two ways to ask the model (`Planner.decoding`):
- `choice` (the default): the candidate steps are built in code (`agents.candidates`) and the
  model picks one by its own probabilities in one prefix-cached pass (`PlannerEngine.choose`);
  only an argument no playbook pins or composes is generated, under a small grammar. A step with
  a single candidate is taken without the model.
- `schema`: the model writes the whole step as JSON constrained to `step_schema` (every token
  decoded, forced or not). Kept as the baseline the benchmarks compare against, and for engines
  that cannot score options.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Literal

import jsonschema

from pydantic import BaseModel, Field, ValidationError

from opsagent.agents.candidates import Candidate, Withheld, offer, reply, reply_up_to
from opsagent.agents.case import Case
from opsagent.agents.confidence import decision_confidence
from opsagent.agents.engines.base import (
    ChatMessage, ChoiceMethod, ChoiceRequest, GenerationRequest, GenerationResult, PlannerEngine,
)
from opsagent.agents.playbooks import Playbook
from opsagent.agents.prompts import build_messages
from opsagent.agents.prompts import compact
from opsagent.agents.step_schema import FINISH, PlannedStep, step_schema
from opsagent.errors import ConfigError, PlannerOutputError
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolSpec

log = logging.getLogger(__name__)

Decoding = Literal["choice", "schema"]


class CandidateScore(BaseModel, frozen=True):
    """One candidate of a step and the probability the model gave it."""

    decision: str = Field(description="The tool (with its enum arguments) or `finish:<status>`.")
    probability: float


class PlannerTurn(BaseModel):
    """One planner turn: the parsed step (None if unusable) and the engine's accounting
    (`generation` is None when the playbook decided without the model)."""

    step: PlannedStep | None
    error: str | None = None
    generation: GenerationResult | None = None
    prompt_digest: str | None = None
    messages: list[ChatMessage] | None = Field(None, description="The prompt, when the model was called.")
    confidence: float | None = Field(
        None, description="The model's probability of the step's decision: among the candidates "
        "(`choice`), or of the tokens spelling it (`schema`, `agents.confidence`); None when the "
        "engine gives no log-probabilities or no model was called.")
    decided_by: Literal["model", "rule"] | None = Field(
        None, description="`model`: the engine chose; `rule`: the playbook left one step (no call).")
    candidates: list[CandidateScore] | None = Field(
        None, description="Every candidate with its probability (`choice` decoding).")
    withheld: list[Withheld] = Field(
        default_factory=list, description="Steps the playbook's SOP rules kept from the choice, "
        "each with the rule's name (`choice` decoding); with `decided_by = rule` and one "
        "candidate left, these rules decided the step.")


class Planner:
    """Builds the prompt and the candidates (or schema) for a case, asks the engine, returns the step."""

    def __init__(
        self, engine: PlannerEngine, playbooks: dict[str, Playbook], registry: ToolRegistry,
        *, max_tokens: int = 160, decoding: Decoding = "choice", choice_method: ChoiceMethod = "branch",
    ) -> None:
        self.engine = engine
        self.playbooks = playbooks
        self.registry = registry
        self.max_tokens = max_tokens
        self.decoding = decoding
        self.choice_method = choice_method

    def playbook(self, exception_type: str) -> Playbook:
        try:
            return self.playbooks[exception_type]
        except KeyError:
            raise ConfigError(f"no playbook for exception class {exception_type!r}") from None

    async def warm_up(self, allowed_tools: dict[str, list[str]]) -> int:
        """Compute each class's shared prompt prefix once, all classes in one batch, so that the
        first cases reuse it from vLLM's prefix cache instead of each computing its own copy.
        Returns the number of classes warmed."""
        requests = []
        for exception_type, allowed in allowed_tools.items():
            playbook = self.playbooks.get(exception_type)
            if playbook is None or not playbook.examples:
                continue
            case = Case(case_id=f"warm-up-{exception_type}", report=playbook.examples[0].report)
            requests.append(self._request(playbook, case, allowed, max_tokens=1))
        log.info("planner: warming %d class prefixes in one batch", len(requests))
        await asyncio.gather(*(self.engine.generate(r) for r in requests))
        return len(requests)

    def _tools(self, allowed_tools: list[str]) -> list[ToolSpec]:
        return [self.registry.get(n) for n in allowed_tools if n in self.registry]

    def _request(self, playbook: Playbook, case: Case, allowed_tools: list[str],
                 max_tokens: int) -> GenerationRequest:
        tools = self._tools(allowed_tools)
        return GenerationRequest(
            request_id=_request_id(case),
            messages=build_messages(playbook, tools, case),
            json_schema=step_schema(playbook, tools, case),
            max_tokens=max_tokens,
        )

    async def plan(self, case: Case, allowed_tools: list[str]) -> PlannerTurn:
        """The next step of `case`, offering only `allowed_tools`."""
        playbook = self.playbook(case.report.exception_type)
        if (done := _concluding_step(playbook, case)) is not None:
            return PlannerTurn(step=done, decided_by="rule", confidence=1.0, candidates=[
                CandidateScore(decision=f"{FINISH}:{done.status}", probability=1.0)])
        if self.decoding == "choice" and self.engine.supports_choice:
            return await self._choose(playbook, case, allowed_tools)
        request = self._request(playbook, case, allowed_tools, self.max_tokens)
        messages = request.messages
        digest = _digest(messages)
        generation = await self.engine.generate(request)
        try:
            step = parse_step(generation, request.json_schema)
        except PlannerOutputError as exc:
            return PlannerTurn(step=None, error=str(exc), generation=generation, prompt_digest=digest,
                               messages=messages, decided_by="model")
        return PlannerTurn(step=step, generation=generation, prompt_digest=digest, messages=messages,
                           confidence=decision_confidence(generation.text, generation.tokens),
                           decided_by="model")

    async def _choose(self, playbook: Playbook, case: Case, allowed_tools: list[str]) -> PlannerTurn:
        """The model picks among the candidates; free arguments, if any, are generated after."""
        tools = self._tools(allowed_tools)
        offered = offer(playbook, tools, case)
        candidates, withheld = _distinct(offered.candidates), offered.withheld
        messages = build_messages(playbook, tools, case)
        digest = _digest(messages)
        if len(candidates) == 1:
            only = candidates[0]
            if not only.free:
                return PlannerTurn(step=only.step, decided_by="rule", confidence=1.0, withheld=withheld,
                                   candidates=[CandidateScore(decision=only.decision, probability=1.0)])
            chosen, probabilities, choice = only, [1.0], None
        else:
            try:
                choice = await self.engine.choose(ChoiceRequest(
                    request_id=_request_id(case), messages=messages,
                    options=[c.option() for c in candidates], method=self.choice_method))
            except PlannerOutputError as exc:
                return PlannerTurn(step=None, error=str(exc), prompt_digest=digest, messages=messages,
                                   decided_by="model", withheld=withheld)
            chosen, probabilities = candidates[choice.index], choice.probabilities
        scores = [CandidateScore(decision=c.decision, probability=p)
                  for c, p in zip(candidates, probabilities, strict=True)]
        started = choice.started_at if choice else datetime.now(UTC)
        step, generations, error = await self._fill_free(playbook, chosen, messages, case)
        generation = GenerationResult(
            text=compact(reply(step)), model=self.engine.model,
            prompt_tokens=(choice.prompt_tokens if choice else 0)
            + sum(g.prompt_tokens for g in generations),
            completion_tokens=sum(g.completion_tokens for g in generations),
            finish_reason="stop" if error is None else "length",
            started_at=started, finished_at=datetime.now(UTC),
            first_token_at=choice.finished_at if choice else None,
            cached_prompt_tokens=_cached(choice, generations),
            queued_ms=choice.queued_ms if choice else None,
        )
        return PlannerTurn(step=None if error else step, error=error, generation=generation,
                           prompt_digest=digest, messages=messages, decided_by="model",
                           confidence=probabilities[candidates.index(chosen)], candidates=scores,
                           withheld=withheld)

    async def _fill_free(self, playbook: Playbook, chosen: Candidate, messages: list[ChatMessage],
                         case: Case) -> tuple[PlannedStep, list[GenerationResult], str | None]:
        """Generate the chosen candidate's free arguments one by one, each continuing the reply
        so far under a grammar for that argument's value alone."""
        step = chosen.step.model_copy(deep=True)
        generations: list[GenerationResult] = []
        for name in chosen.free:
            prop = (self.registry.get(step.tool).parameters.get("properties") or {}).get(name, {})
            generation = await self.engine.generate(GenerationRequest(
                request_id=_request_id(case), messages=messages, prefix=reply_up_to(step, name),
                regex=_value_regex(prop, playbook.max_string), target=f"args.{name}",
                max_tokens=min(self.max_tokens, playbook.max_string // 2 + 8)))
            generations.append(generation)
            try:
                if generation.finish_reason not in ("stop", "eos"):
                    raise ValueError(f"cut off ({generation.finish_reason})")
                step.args[name] = json.loads(generation.text)
            except ValueError as exc:
                return step, generations, f"planner output for {step.tool}.{name} unusable: {exc}: " \
                    f"{generation.text[:100]!r}"
        return step, generations, None


def _request_id(case: Case) -> str:
    return f"{case.case_id}-{len(case.steps)}-{uuid.uuid4().hex[:6]}"


def _digest(messages: list[ChatMessage]) -> str:
    return hashlib.sha256(json.dumps([m.model_dump() for m in messages]).encode()).hexdigest()[:16]


def _distinct(candidates: list[Candidate]) -> list[Candidate]:
    """One candidate per option text (the engine cannot tell identical options apart)."""
    seen: dict[str, Candidate] = {}
    for c in candidates:
        seen.setdefault(c.option(), c)
    return list(seen.values())


def _value_regex(prop: dict, max_string: int) -> str:
    """A grammar for one JSON value of the argument's type."""
    if prop.get("type") in ("number", "integer"):
        return r"-?[0-9]{1,9}" + (r"(\.[0-9]{1,4})?" if prop.get("type") == "number" else "")
    if prop.get("type") == "boolean":
        return "(true|false)"
    return r'"[^"\\\n]{3,%d}"' % max_string


def _cached(choice, generations: list[GenerationResult]) -> int | None:
    parts = ([choice.cached_prompt_tokens] if choice else []) + \
        [g.cached_prompt_tokens for g in generations]
    return None if not parts or None in parts else sum(parts)


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
