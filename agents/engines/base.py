"""The planner engine interface: chat messages and a JSON schema in, constrained JSON out."""

from __future__ import annotations

import abc
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class ChatMessage(BaseModel, frozen=True):
    """One message of the planner's conversation."""

    role: Literal["system", "user", "assistant"]
    content: str


class GenerationRequest(BaseModel, frozen=True):
    """One constrained generation: the output must validate against `json_schema`."""

    request_id: str
    messages: list[ChatMessage]
    json_schema: dict[str, Any]
    max_tokens: int = Field(default=160, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)


class GenerationResult(BaseModel, frozen=True):
    """What the engine produced, with the accounting the traces need."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" when the output is complete; "length" when cut off
    started_at: datetime
    finished_at: datetime

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at).total_seconds() * 1000


class PlannerEngine(abc.ABC):
    """A model behind the planner. Implementations: vLLM in-process, OpenAI-compatible, scripted."""

    model: str

    async def start(self) -> None:
        """Load the model or connect; called once before the first `generate`."""

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate one schema-constrained completion for a chat conversation."""

    async def close(self) -> None:
        """Release the model or connection."""
