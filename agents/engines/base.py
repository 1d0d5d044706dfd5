"""The planner engine interface: chat messages and a JSON schema in, constrained JSON out."""

from __future__ import annotations

import abc
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

OutputFormat = Literal["compact", "schema", "free"]
"""How an output is constrained: `compact` = to the JSON schema with no whitespace (the planner's
default), `schema` = to the schema with whitespace allowed, `free` = unconstrained text (for
measuring what the grammar saves; the planner never uses it)."""


class ChatMessage(BaseModel, frozen=True):
    """One message of the planner's conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


class GenerationRequest(BaseModel, frozen=True):
    """One constrained generation: the output must validate against `json_schema` (or match
    `regex`, when given). With a `prefix`, the assistant's reply already starts with it and the
    output is only its continuation."""

    request_id: str
    messages: list[ChatMessage]
    json_schema: dict[str, Any] = Field(default_factory=dict)
    regex: str | None = Field(default=None, description="Constrain the output to this regular "
                              "expression instead of the JSON schema.")
    prefix: str = Field(default="", description="The start of the assistant's reply, decided "
                        "before the call; the output continues it.")
    target: str | None = Field(default=None, description="What the output fills in when it "
                               "continues a decided reply, e.g. `args.reason`.")
    max_tokens: int = Field(default=160, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    output_format: OutputFormat = Field(default="compact", description="See `OutputFormat`.")


class TokenLogprob(BaseModel, frozen=True):
    """One output token and its log-probability."""

    text: str
    logprob: float


class GenerationResult(BaseModel, frozen=True):
    """What the engine produced, with the accounting the traces need."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" when the output is complete; "length" when cut off
    started_at: datetime
    finished_at: datetime
    first_token_at: datetime | None = Field(
        default=None, description="When the first output token arrived (engines that stream it).")
    cached_prompt_tokens: int | None = Field(
        default=None, description="Prompt tokens served from the prefix cache, if the engine says.")
    queued_ms: float | None = Field(
        default=None, description="Time the request waited in the engine's queue before it was "
        "first scheduled, if the engine reports it (part of the prefill time).")
    tokens: list[TokenLogprob] | None = Field(
        default=None, description="The output tokens with the log-probability the model gave each "
        "among the tokens the output grammar allowed, if the engine reports them; their texts "
        "concatenate to `text`.")

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at).total_seconds() * 1000

    @property
    def prefill_ms(self) -> float | None:
        """Start to first token: queueing in the engine, prompt processing, the first token."""
        if self.first_token_at is None:
            return None
        return (self.first_token_at - self.started_at).total_seconds() * 1000

    @property
    def decode_ms(self) -> float | None:
        """First token to the end: the remaining output tokens."""
        if self.first_token_at is None:
            return None
        return (self.finished_at - self.first_token_at).total_seconds() * 1000


ChoiceMethod = Literal["branch", "score"]
"""How an engine picks among options: `branch` = the model's next-token probabilities at each
token where the options part (one-token requests, no output decoded); `score` = the
log-likelihood of each option's whole text (prompt log-probabilities, one request per option)."""


class ChoiceRequest(BaseModel, frozen=True):
    """Pick one of several assistant answers to a conversation (the step's candidates).

    Each option is the start of the assistant's reply up to and including the text that tells
    the candidates apart; no option may be a prefix of another."""

    request_id: str
    messages: list[ChatMessage]
    options: list[str] = Field(min_length=2)
    method: ChoiceMethod = "branch"


class ChoiceResult(BaseModel, frozen=True):
    """The model's distribution over the options and the accounting the traces need."""

    index: int = Field(description="The most probable option.")
    probabilities: list[float] = Field(description="One per option, summing to 1.")
    model: str
    prompt_tokens: int = Field(description="Tokens the engine was given, over all its requests.")
    cached_prompt_tokens: int | None = None
    requests: int = Field(default=1, description="Engine requests the choice took.")
    started_at: datetime
    finished_at: datetime
    queued_ms: float | None = None

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at).total_seconds() * 1000


class PlannerEngine(abc.ABC):
    """A model behind the planner. Implementations: vLLM in-process, OpenAI-compatible, scripted."""

    model: str
    supports_choice: bool = False
    """Whether `choose` works; the planner writes whole steps with engines that cannot."""

    async def start(self) -> None:
        """Load the model or connect; called once before the first `generate`."""

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate one schema-constrained completion for a chat conversation."""

    async def choose(self, request: ChoiceRequest) -> ChoiceResult:
        """Pick among `request.options`. Engines that cannot score options raise
        `EngineError`; the planner then falls back to generating the whole step."""
        from opsagent.errors import EngineError

        raise EngineError(f"{type(self).__name__} cannot choose among options")

    async def close(self) -> None:
        """Release the model or connection."""
