"""Any OpenAI-compatible chat server (e.g. `python -m vllm.entrypoints.openai.api_server`)."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import httpx
from pydantic import BaseModel, Field

from opsagent.agents.engines.base import GenerationRequest, GenerationResult, PlannerEngine
from opsagent.errors import EngineError


class OpenAIEngineConfig(BaseModel):
    """Where the server is and which model it serves."""

    base_url: str = Field(description="Server root, e.g. http://127.0.0.1:8000/v1")
    model: str = Field(description="Model name as the server knows it.")
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the API key (never the key itself)."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout.")


class OpenAIEngine(PlannerEngine):
    """Chat completions with `response_format: json_schema` (strict), over httpx."""

    def __init__(self, config: OpenAIEngineConfig) -> None:
        self.config = config
        self.model = config.model
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        headers = {}
        if self.config.api_key_env:
            key = os.environ.get(self.config.api_key_env)
            if not key:
                raise EngineError(f"environment variable {self.config.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.AsyncClient(
            base_url=self.config.base_url.rstrip("/"), headers=headers, timeout=self.config.timeout_s
        )

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self._client is None:
            await self.start()
        assert self._client is not None
        body = {
            "model": self.config.model,
            "messages": [m.model_dump() for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.output_format != "free":  # the server decides whitespace: compact = schema here
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "planner_step", "schema": request.json_schema, "strict": True},
            }
        started = datetime.now(UTC)
        try:
            response = await self._client.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise EngineError(f"planner server unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise EngineError(f"planner server answered {response.status_code}: {response.text[:300]}")
        try:
            data = response.json()
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return GenerationResult(
                text=choice["message"]["content"] or "",
                model=data.get("model", self.model),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                finish_reason=choice.get("finish_reason") or "unknown",
                started_at=started,
                finished_at=datetime.now(UTC),
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EngineError(f"planner server sent an unexpected body: {response.text[:300]}") from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
