"""What a system's start-up is about to do, said before it starts: the planner's first start can
take minutes on a CPU (converting the embedded model, loading it, warming prompt prefixes)."""

from __future__ import annotations

from opsagent.agents.engines.embedded_model import _DONE, MODEL_NAME, cache_dir
from opsagent.cluster.config import SystemConfig


def planner_start_line(config: SystemConfig) -> str:
    """What the planner's start-up is about to do: convert the embedded model (first run only),
    load it into the engine, warm the classes' prompt prefixes."""
    steps = []
    if config.planner.engine == "vllm" and config.planner.vllm.model is None:
        if not (cache_dir() / MODEL_NAME / _DONE).exists():
            steps.append(f"converting the embedded {MODEL_NAME} to a Hugging Face folder in "
                         f"{cache_dir()} (first run only, about 20 s)")
        steps.append(f"loading {MODEL_NAME} into vLLM")
    else:
        steps.append(f"starting the {config.planner.engine} engine")
    warm = config.planner.warm_classes
    if warm is None:
        steps.append("warming every class's prompt prefix")
    elif warm:
        steps.append(f"warming {len(warm)} class prompt prefix{'es' if len(warm) > 1 else ''} "
                     f"({', '.join(warm)})")
    return "planner starting: " + ", then ".join(steps)
