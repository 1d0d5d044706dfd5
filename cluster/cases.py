"""The case manager actor: a thin Ray shell around `CaseBook` (cluster/case_book.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

from opsagent.cluster.case_book import CaseBook
from opsagent.cluster.case_store import CaseStore
from opsagent.cluster.ports import AckTally, ExecutorPool, PlannerPool, PolicyHandle, TraceHandle
from opsagent.tools.registry import ToolRegistry

CASES_FILE = "cases.sqlite"


@ray.remote
class CaseManager(CaseBook):
    """Owns the cases in flight. With `state_dir` every case is kept in <state_dir>/cases.sqlite:
    restarted (it is created with `max_restarts`), the actor loads them and resumes each open
    case from its last completed step."""

    def __init__(self, planner: Any, policy: Any, executors: list[Any], tracer: Any,
                 registry: ToolRegistry, max_steps: int = 6, max_open_cases: int = 1000,
                 state_dir: str | None = None) -> None:
        store = CaseStore(Path(state_dir) / CASES_FILE) if state_dir else None
        super().__init__(PlannerPool(planner), PolicyHandle(policy), ExecutorPool(executors),
                         TraceHandle(tracer), registry, max_steps=max_steps,
                         max_open_cases=max_open_cases, store=store)

    def recovered_cases(self) -> int:
        """Open cases this incarnation resumed from the store."""
        return self.recovered

    def trace_acks(self) -> AckTally:
        """The trace events this incarnation had acknowledged by the trace writer."""
        return self._tracer.tally

    def pid(self) -> int:
        return os.getpid()
