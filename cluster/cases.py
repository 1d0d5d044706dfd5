"""The case manager actor: a thin Ray shell around `CaseBook` (cluster/case_book.py)."""

from __future__ import annotations

from typing import Any

import ray

from opsagent.cluster.case_book import CaseBook
from opsagent.cluster.ports import ExecutorPool, PlannerHandle, PolicyHandle, TraceHandle
from opsagent.tools.registry import ToolRegistry


@ray.remote
class CaseManager(CaseBook):
    """Owns the cases in flight (in memory for now; durable cases are issue 8)."""

    def __init__(self, planner: Any, policy: Any, executors: list[Any], tracer: Any,
                 registry: ToolRegistry, max_steps: int = 6, max_open_cases: int = 1000) -> None:
        super().__init__(PlannerHandle(planner), PolicyHandle(policy), ExecutorPool(executors),
                         TraceHandle(tracer), registry, max_steps=max_steps,
                         max_open_cases=max_open_cases)
