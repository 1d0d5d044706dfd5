"""A planner engine wrapper that appends every generation's and choice's timings to a JSON-lines file.

The planner actor owns the engine, and the trace store keeps start and end of each call but not
its first token; the wrapper is pickled into the actor with the real engine and writes one line
per call (`EngineTiming`), which the benchmark joins with `planner_calls` on case and start time.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from opsagent.agents.engines.base import (
    ChoiceMethod, ChoiceRequest, ChoiceResult, GenerationRequest, GenerationResult, PlannerEngine,
)


class EngineTiming(BaseModel):
    """One generation as the engine saw it."""

    request_id: str
    started_at: datetime
    first_token_at: datetime | None
    finished_at: datetime
    prompt_tokens: int
    cached_prompt_tokens: int | None
    completion_tokens: int
    queued_ms: float | None
    json_schema: dict[str, Any] | None = None
    max_tokens: int | None = None
    options: list[str] | None = None
    method: ChoiceMethod | None = None
    prefix: str | None = None
    regex: str | None = None

    @classmethod
    def of(cls, request: GenerationRequest, result: GenerationResult) -> EngineTiming:
        return cls(request_id=request.request_id, started_at=result.started_at,
                   first_token_at=result.first_token_at, finished_at=result.finished_at,
                   prompt_tokens=result.prompt_tokens, cached_prompt_tokens=result.cached_prompt_tokens,
                   completion_tokens=result.completion_tokens, queued_ms=result.queued_ms,
                   json_schema=request.json_schema, max_tokens=request.max_tokens,
                   prefix=request.prefix or None, regex=request.regex)

    @classmethod
    def of_choice(cls, request: ChoiceRequest, result: ChoiceResult) -> EngineTiming:
        """A choice decodes nothing: all of it counts as prefill (first token = its end)."""
        return cls(request_id=request.request_id, started_at=result.started_at,
                   first_token_at=result.finished_at, finished_at=result.finished_at,
                   prompt_tokens=result.prompt_tokens, cached_prompt_tokens=result.cached_prompt_tokens,
                   completion_tokens=0, queued_ms=result.queued_ms, options=request.options,
                   method=request.method)


class RecordingEngine(PlannerEngine):
    """Delegates to `inner`; appends an `EngineTiming` line to `path` after every generation."""

    def __init__(self, inner: PlannerEngine, path: Path | str) -> None:
        self.inner = inner
        self.model = inner.model
        self.supports_choice = inner.supports_choice
        self.path = str(path)

    async def start(self) -> None:
        await self.inner.start()
        self.model = self.inner.model

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        result = await self.inner.generate(request)
        self._write(EngineTiming.of(request, result))
        return result

    async def choose(self, request: ChoiceRequest) -> ChoiceResult:
        result = await self.inner.choose(request)
        self._write(EngineTiming.of_choice(request, result))
        return result

    def _write(self, timing: EngineTiming) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(timing.model_dump_json() + "\n")

    async def close(self) -> None:
        await self.inner.close()


def read_timings(path: Path | str) -> list[EngineTiming]:
    """The lines a `RecordingEngine` wrote (none if it wrote nothing)."""
    file = Path(path)
    if not file.exists():
        return []
    return [EngineTiming.model_validate(json.loads(line))
            for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
