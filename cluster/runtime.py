"""Starting and stopping the local Ray runtime opsagent runs on."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import ray

NAMESPACE = "opsagent"
# Keep Ray and vLLM on loopback: these machines have no other network worth binding to.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "VLLM_HOST_IP": "127.0.0.1"}


def start_ray(*, address: str | None = None, num_cpus: int | None = None,
              metrics_export_port: int | None = None, metrics_report_interval_ms: int | None = None) -> None:
    """Join `address` or start a local Ray runtime (no dashboard), once per process.

    A local runtime serves Prometheus metrics (opsagent's, vLLM's and Ray's own, cluster/metrics.py)
    at http://127.0.0.1:<metrics_export_port>/metrics (default: OPSAGENT_METRICS_PORT, else a port
    Ray picks); `metrics_report_interval_ms`: how often processes report them (Ray's default 10 s)."""
    if ray.is_initialized():
        return
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    local: dict = {}
    if address is None:
        port = metrics_export_port or int(os.environ.get("OPSAGENT_METRICS_PORT", "0"))
        if port:
            local["_metrics_export_port"] = port
        if metrics_report_interval_ms:
            local["_system_config"] = {"metrics_report_interval_ms": metrics_report_interval_ms}
    ray.init(
        **local,
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


@contextlib.contextmanager
def private_tmpdir() -> Iterator[str]:
    """Point this process's temp folder (inherited by the Ray and vLLM processes it starts) at a
    fresh short folder and remove it afterwards: they leave session folders and IPC sockets."""
    path = tempfile.mkdtemp(prefix="oa-", dir="/tmp" if os.path.isdir("/tmp") else None)
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"], tempfile.tempdir = path, None
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous
        tempfile.tempdir = None
        shutil.rmtree(path, ignore_errors=True)
