"""The floor: what a case costs the engine alone, plus its tool calls' own time.

Each case's recorded planner requests (the prompt from `planner_calls.prompt`, the schema the
planner sent, `max_tokens` = the completion tokens it produced) are re-issued one at a time to a
`VllmEngine` in this process, after the classes' shared prompt prefixes were computed once (as the
system's start-up does); identical requests are issued once. Its recorded tool calls are re-issued,
in order, to a fresh platform planted with the same instances. Only calls inside the case's
latency window count (up to its last system-of-record update).

`measure_choices` re-issues a subset to measure what each engine choice is worth: prefix caching
off, output constrained with whitespace allowed, output unconstrained, and 16 cases at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import jsonschema
from pydantic import BaseModel, Field

from opsagent.agents.engines.base import (
    ChatMessage, ChoiceMethod, ChoiceRequest, GenerationRequest, GenerationResult, OutputFormat,
)
from opsagent.agents.engines.vllm_engine import VllmEngine, VllmEngineConfig
from opsagent.evals.bench.recording import EngineTiming
from opsagent.evals.bench.stats import ratio
from opsagent.evals.bench.trace_rows import RecordedCall, RecordedTool
from opsagent.evals.catalogue import Instance, plant
from opsagent.tools.http import call_tool
from opsagent.tools.platform.launcher import Platform


class FloorRequest(BaseModel):
    """One recorded planner request, ready to re-issue."""

    case_id: str
    exception_type: str
    step: int
    finished_at: datetime = Field(description="When the recorded call ended (for the latency window).")
    messages: list[ChatMessage]
    json_schema: dict[str, Any] = Field(default_factory=dict)
    max_tokens: int
    output: str
    options: list[str] | None = Field(None, description="A choice among these (choice decoding).")
    method: ChoiceMethod | None = None

    @property
    def key(self) -> str:
        text = json.dumps([[m.model_dump() for m in self.messages], self.json_schema, self.max_tokens,
                           self.options], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def choice(self, method: ChoiceMethod | None = None, suffix: str = "") -> ChoiceRequest:
        return ChoiceRequest(request_id=f"floor-{self.key[:12]}-{suffix}-{uuid.uuid4().hex[:6]}",
                             messages=self.messages, options=self.options or [],
                             method=method or self.method or "branch")

    def chose_as_recorded(self, index: int) -> bool:
        """The re-issued choice picked the option the recorded step began with."""
        return bool(self.options) and self.output.startswith(self.options[index])

    def request(self, output_format: OutputFormat = "compact", max_tokens: int | None = None,
                suffix: str = "") -> GenerationRequest:
        return GenerationRequest(request_id=f"floor-{self.key[:12]}-{suffix}-{uuid.uuid4().hex[:6]}",
                                 messages=self.messages,
                                 json_schema=self.json_schema, max_tokens=max_tokens or self.max_tokens,
                                 output_format=output_format)


def floor_requests(calls: dict[str, list[RecordedCall]], timings: list[EngineTiming],
                   classes: dict[str, str]) -> dict[str, list[FloorRequest]]:
    """Case id -> its requests: prompts from the trace, schemas from the engine recording (joined
    on case and start time; a call without a recorded schema is left out)."""
    recorded = {(t.request_id.rsplit("-", 2)[0], t.started_at): t for t in timings}
    out: dict[str, list[FloorRequest]] = {}
    for case_id, rows in calls.items():
        out[case_id] = []
        for c in rows:
            timing = recorded.get((case_id, c.started_at))
            if timing is None or (timing.options is None and (timing.json_schema is None
                                                              or c.completion_tokens < 1)):
                continue
            out[case_id].append(FloorRequest(
                case_id=case_id, exception_type=classes[case_id], step=c.step, finished_at=c.finished_at,
                messages=[ChatMessage(**m) for m in c.prompt], json_schema=timing.json_schema or {},
                max_tokens=max(1, c.completion_tokens), output=c.output, options=timing.options,
                method=timing.method))
    return out


def warm_prefixes(requests: dict[str, list[FloorRequest]]) -> dict[str, list[ChatMessage]]:
    """Per class, a conversation with the class's shared prefix (a first step's prompt without the
    case's own message) and a stand-in case message."""
    out: dict[str, list[ChatMessage]] = {}
    for rows in requests.values():
        if rows and rows[0].exception_type not in out:
            out[rows[0].exception_type] = [*rows[0].messages[:-1], ChatMessage(role="user", content="warm-up")]
    return out


async def warm(engine: VllmEngine, prefixes: dict[str, list[ChatMessage]]) -> None:
    for n, messages in enumerate(prefixes.values()):
        await engine.generate(GenerationRequest(request_id=f"warm-{n}-{time.monotonic_ns()}", messages=messages,
                                                json_schema={"type": "object"}, max_tokens=1,
                                                output_format="free"))


class CallFloor(BaseModel):
    """One re-issued request."""

    ms: float
    prefill_ms: float | None
    completion_tokens: int
    cached_prompt_tokens: int | None
    same_output: bool


def _floor(result: GenerationResult, req: FloorRequest) -> CallFloor:
    return CallFloor(ms=result.duration_ms, prefill_ms=result.prefill_ms,
                     completion_tokens=result.completion_tokens,
                     cached_prompt_tokens=result.cached_prompt_tokens, same_output=result.text == req.output)


async def planner_floor(engine: VllmEngine, requests: dict[str, list[FloorRequest]]) -> dict[str, CallFloor]:
    """Request key -> its time on the engine, one request at a time, each distinct request once."""
    await warm(engine, warm_prefixes(requests))
    done: dict[str, CallFloor] = {}
    for rows in requests.values():
        for req in rows:
            if req.key in done:
                continue
            if req.options:
                chosen = await engine.choose(req.choice())
                done[req.key] = CallFloor(ms=chosen.duration_ms, prefill_ms=chosen.duration_ms,
                                          completion_tokens=0, cached_prompt_tokens=chosen.cached_prompt_tokens,
                                          same_output=req.chose_as_recorded(chosen.index))
            else:
                done[req.key] = _floor(await engine.generate(req.request()), req)
    return done


def tool_floor(instances: list[Instance], calls: dict[str, list[RecordedTool]],
               case_instance: dict[str, str], background: int = 25) -> dict[str, list[tuple[datetime | None, float]]]:
    """Case id -> (recorded end, measured ms) of each recorded tool call, re-issued in order on a
    fresh platform planted with `instances`."""
    by_id = {i.instance_id: i for i in instances}
    out: dict[str, list[tuple[datetime | None, float]]] = {}
    with Platform(background=background) as platform:
        plant([by_id[case_instance[c]] for c in calls if case_instance.get(c) in by_id], platform)
        registry = platform.registry()

        async def replay() -> None:
            async with httpx.AsyncClient(timeout=10.0) as client:
                for case_id, rows in calls.items():
                    out[case_id] = []
                    for r in rows:
                        spec = registry.get(r.tool)
                        result = await call_tool(client, spec, registry.base_url(spec.system), r.args,
                                                 idempotency_key=f"floor:{case_id}:{r.step}" if spec.writes else None,
                                                 dry_run=r.dry_run)
                        out[case_id].append((r.finished_at, result.duration_ms))

        asyncio.run(replay())
    return out


class CaseFloor(BaseModel):
    """One case: its end-to-end latency against the floor."""

    case_id: str
    concurrency: int
    latency_ms: float
    planner_ms: float
    tool_ms: float
    calls: int
    same_outputs: int

    @property
    def floor_ms(self) -> float:
        return self.planner_ms + self.tool_ms

    @property
    def over_floor(self) -> float | None:
        return ratio(self.latency_ms, self.floor_ms)


def case_floor(case_id: str, concurrency: int, latency_ms: float, end: datetime,
               requests: list[FloorRequest], planner: dict[str, CallFloor],
               tools: list[tuple[datetime | None, float]]) -> CaseFloor:
    inside = [r for r in requests if r.finished_at <= end and r.key in planner]
    return CaseFloor(case_id=case_id, concurrency=concurrency, latency_ms=latency_ms,
                     planner_ms=sum(planner[r.key].ms for r in inside),
                     tool_ms=sum(ms for at, ms in tools if at is None or at <= end), calls=len(inside),
                     same_outputs=sum(planner[r.key].same_output for r in inside))


class ChoiceResult(BaseModel):
    """One engine choice measured on the same requests."""

    name: str
    requests: int
    mean_ms: float | None
    mean_prefill_ms: float | None
    mean_completion_tokens: float | None
    mean_cached_prompt_tokens: float | None = None
    valid: int | None = Field(None, description="Outputs that parse and fit the step's schema.")
    wall_s: float | None = None
    note: str = ""


def _choice(name: str, results: list[tuple[FloorRequest, GenerationResult]], wall_s: float | None = None,
            note: str = "") -> ChoiceResult:
    n = len(results)
    if not n:
        return ChoiceResult(name=name, requests=0, mean_ms=None, mean_prefill_ms=None,
                            mean_completion_tokens=None, note=note)
    prefills = [r.prefill_ms for _, r in results if r.prefill_ms is not None]
    cached = [r.cached_prompt_tokens for _, r in results if r.cached_prompt_tokens is not None]
    return ChoiceResult(
        name=name, requests=n, mean_ms=sum(r.duration_ms for _, r in results) / n,
        mean_prefill_ms=sum(prefills) / len(prefills) if prefills else None,
        mean_completion_tokens=sum(r.completion_tokens for _, r in results) / n,
        mean_cached_prompt_tokens=sum(cached) / len(cached) if cached else None,
        valid=sum(_valid(r.text, q.json_schema) for q, r in results), wall_s=wall_s, note=note)


def _valid(text: str, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


async def _sequential(engine: VllmEngine, requests: dict[str, list[FloorRequest]], output_format: OutputFormat,
                      max_tokens: int | None, tag: str) -> tuple[list[tuple[FloorRequest, GenerationResult]], float]:
    out = []
    t0 = time.monotonic()
    for rows in requests.values():
        for req in rows:
            out.append((req, await engine.generate(req.request(output_format, max_tokens, tag))))
    return out, time.monotonic() - t0


async def _concurrent(engine: VllmEngine, requests: dict[str, list[FloorRequest]], width: int,
                      tag: str) -> tuple[list[tuple[FloorRequest, GenerationResult]], float]:
    gate = asyncio.Semaphore(width)
    out: list[tuple[FloorRequest, GenerationResult]] = []

    async def case(rows: list[FloorRequest]) -> None:
        async with gate:
            for req in rows:
                out.append((req, await engine.generate(req.request(suffix=tag))))

    t0 = time.monotonic()
    await asyncio.gather(*(case(rows) for rows in requests.values()))
    return out, time.monotonic() - t0


async def measure_choices(engine: VllmEngine, requests: dict[str, list[FloorRequest]], *,
                          free_max_tokens: int = 160, batch: int = 16) -> list[ChoiceResult]:
    """On a started engine with prefix caching: the same requests compact (the baseline), with
    whitespace allowed, unconstrained, and `batch` cases at once; the prefix cache is reset and
    the class prefixes re-warmed before each pass, so every pass starts alike."""
    prefixes = warm_prefixes(requests)
    if any(req.options for rows in requests.values() for req in rows):
        return await measure_choice_methods(engine, requests, prefixes)
    out = []
    for name, fmt, max_tokens, note in (
            ("compact constrained (planner)", "compact", None, "max_tokens = recorded output"),
            ("constrained, whitespace allowed", "schema", free_max_tokens, f"max_tokens {free_max_tokens}"),
            ("free JSON (no grammar)", "free", free_max_tokens, f"max_tokens {free_max_tokens}")):
        await engine.reset_prefix_cache()
        await warm(engine, prefixes)
        results, wall = await _sequential(engine, requests, fmt, max_tokens, name.split()[0])
        out.append(_choice(name, results, wall, f"one at a time; {note}"))
    await engine.reset_prefix_cache()
    await warm(engine, prefixes)
    results, wall = await _concurrent(engine, requests, batch, "batch")
    width = min(batch, len(requests))
    out.append(_choice(f"compact, {width} cases at once", results, wall,
                       f"{len(requests)} cases, at most {batch} at once, each case's calls in order"))
    return out


async def measure_choice_methods(engine: VllmEngine, requests: dict[str, list[FloorRequest]],
                                 prefixes: dict[str, list[ChatMessage]]) -> list[ChoiceResult]:
    """Choice decoding's two ways of scoring candidates on the same recorded choices, one at a
    time, each pass from a reset and re-warmed prefix cache: `valid` counts the choices that
    picked what the run recorded."""
    choices = {k: [r for r in rows if r.options] for k, rows in requests.items()}
    out = []
    for method in ("branch", "score"):
        await engine.reset_prefix_cache()
        await warm(engine, prefixes)
        t0 = time.monotonic()
        times, agree, cached = [], 0, []
        for rows in choices.values():
            for req in rows:
                result = await engine.choose(req.choice(method, method))
                times.append(result.duration_ms)
                agree += req.chose_as_recorded(result.index)
                if result.cached_prompt_tokens is not None:
                    cached.append(result.cached_prompt_tokens)
        n = len(times)
        out.append(ChoiceResult(
            name=f"choice by {method}", requests=n, mean_ms=sum(times) / n if n else None,
            mean_prefill_ms=sum(times) / n if n else None, mean_completion_tokens=0.0 if n else None,
            mean_cached_prompt_tokens=sum(cached) / len(cached) if cached else None, valid=agree,
            wall_s=time.monotonic() - t0,
            note="one at a time; valid = same choice as the run recorded"))
    return out


async def measure_without_prefix_cache(config: VllmEngineConfig,
                                       requests: dict[str, list[FloorRequest]]) -> ChoiceResult:
    """The compact requests one at a time on an engine with prefix caching off."""
    engine = VllmEngine(config.model_copy(update={"enable_prefix_caching": False}))
    await engine.start()
    try:
        results, wall = await _sequential(engine, requests, "compact", None, "nocache")
    finally:
        await engine.close()
    return _choice("compact, prefix caching off", results, wall, "one at a time; fresh engine")
