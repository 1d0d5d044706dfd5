"""Starting and stopping the local Ray runtime opsagent runs on."""

from __future__ import annotations

import os

import ray

NAMESPACE = "opsagent"
# Keep Ray and vLLM on loopback: these machines have no other network worth binding to.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1"}


def start_ray(*, address: str | None = None, num_cpus: int | None = None) -> None:
    """Join `address` or start a local Ray runtime (no dashboard), once per process."""
    if ray.is_initialized():
        return
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    ray.init(
        address=address,
        num_cpus=None if address else num_cpus,
        include_dashboard=False,
        namespace=NAMESPACE,
        log_to_driver=os.environ.get("OPSAGENT_RAY_LOGS", "0") == "1",
        runtime_env={"env_vars": dict(LOOPBACK_ENV)},
    )


def stop_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()
