"""Any OpenAI-compatible chat server (e.g. `python -m vllm.entrypoints.openai.api_server`),
through the official `openai` SDK: its retries (connection errors, 408/409/429/5xx, with
exponential backoff) and its typed responses."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import openai
from pydantic import BaseModel, Field

from opsagent.agents.engines.base import GenerationRequest, GenerationResult, PlannerEngine, TokenLogprob
from opsagent.errors import EngineError

NO_KEY = "no-key"
"""Sent as the API key to a server that wants none (the SDK always sends one)."""


class OpenAIEngineConfig(BaseModel):
    """Where the server is and which model it serves."""

    model_config = {"extra": "forbid"}
    base_url: str = Field(description="Server root, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="Model name as the server knows it.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key (never the key itself)."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout.")
    max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries of a request that failed to connect or was "
        "answered 408, 409, 429 or 5xx, with the SDK's exponential backoff.")
    logprobs: bool = Field(
        default=True, description="Ask for the output tokens' log-probabilities, from which the "
        "planner's decision confidence is computed (agents/confidence.py); without them every "
        "confidence is unknown and a policy's min_confidence holds every write.")


class OpenAIEngine(PlannerEngine):
    """Chat completions with `response_format: json_schema` (strict) and token log-probabilities."""

    def __init__(self, config: OpenAIEngineConfig) -> None:
        self.config = config
        self.model = config.model
        self._client: openai.AsyncOpenAI | None = None

    async def start(self) -> None:
        key = NO_KEY
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env, "")
            if not key:
                raise EngineError(f"environment variable {self.config.api_key_env} is not set")
        self._client = openai.AsyncOpenAI(
            base_url=self.config.base_url.rstrip("/"), api_key=key,
            timeout=self.config.timeout_s, max_retries=self.config.max_retries)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self._client is None:
            await self.start()
        assert self._client is not None
        extra: dict[str, Any] = {}
        if request.output_format != "free":  # the server decides whitespace: compact = schema here
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "planner_step", "schema": request.json_schema, "strict": True},
            }
        if self.config.logprobs:
            extra["logprobs"] = True
        started = datetime.now(UTC)
        try:
            completion = await self._client.chat.completions.create(
                model=self.config.model, messages=[m.model_dump() for m in request.messages],
                max_tokens=request.max_tokens, temperature=request.temperature, **extra)
        except openai.APIStatusError as exc:
            raise EngineError(f"planner server answered {exc.status_code}: {str(exc)[:300]}") from exc
        except openai.APIConnectionError as exc:
            raise EngineError(f"planner server unreachable: {type(exc).__name__}: {exc}") from exc
        except openai.OpenAIError as exc:
            raise EngineError(f"planner server call failed: {type(exc).__name__}: {exc}") from exc
        if not completion.choices:
            raise EngineError(f"planner server sent no choice: {completion.model_dump_json()[:300]}")
        choice = completion.choices[0]
        usage = completion.usage
        return GenerationResult(
            text=choice.message.content or "",
            model=completion.model or self.model,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            finish_reason=choice.finish_reason or "unknown",
            started_at=started,
            finished_at=datetime.now(UTC),
            tokens=_tokens(choice),
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _tokens(choice: Any) -> list[TokenLogprob] | None:
    """The output tokens and their log-probabilities, if the server sent them, up to the end of the
    text: vLLM's server also lists the stop token it sampled (`<|im_end|>`), which the text omits."""
    content = choice.logprobs.content if choice.logprobs is not None else None
    if not content:
        return None
    tokens = [TokenLogprob(text=t.token, logprob=t.logprob) for t in content]
    text, joined = choice.message.content or "", "".join(t.text for t in tokens)
    while tokens and len(joined) > len(text) and joined.startswith(text):
        joined = joined[:len(joined) - len(tokens.pop().text)]
    return tokens
