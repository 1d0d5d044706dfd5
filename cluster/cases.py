"""The case manager actor: accepts exceptions, runs each case as a task, answers status."""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from opsagent.agents.case import Case, ExceptionReport
from opsagent.agents.runner import CaseRunner
from opsagent.cluster.ports import ExecutorPool, PlannerHandle, PolicyHandle, TraceHandle
from opsagent.errors import CaseNotFound, OverloadedError
from opsagent.tools.registry import ToolRegistry


@ray.remote
class CaseManager:
    """Owns the cases in flight (in memory for now; durable cases are issue 8)."""

    def __init__(self, planner: Any, policy: Any, executors: list[Any], tracer: Any,
                 registry: ToolRegistry, max_steps: int = 6, max_open_cases: int = 1000) -> None:
        self._runner = CaseRunner(
            PlannerHandle(planner), PolicyHandle(policy), ExecutorPool(executors),
            TraceHandle(tracer), registry, max_steps=max_steps,
        )
        self._cases: dict[str, Case] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._max_open = max_open_cases

    async def submit(self, report: ExceptionReport) -> Case:
        """Open a case and start it; refuses (OverloadedError) rather than queue without bound."""
        if len(self._tasks) >= self._max_open:
            raise OverloadedError("open cases", len(self._tasks), self._max_open)
        case = Case(report=report)
        self._cases[case.case_id] = case
        task = asyncio.get_running_loop().create_task(self._runner.run(case))
        self._tasks[case.case_id] = task
        task.add_done_callback(lambda _t, cid=case.case_id: self._tasks.pop(cid, None))
        return case

    async def resume(self, case_id: str) -> Case:
        """Continue a case whose held action was decided; a no-op unless it awaits approval."""
        case = self.get(case_id)
        if case_id not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._runner.resume(case))
            self._tasks[case_id] = task
            task.add_done_callback(lambda _t, cid=case_id: self._tasks.pop(cid, None))
        return case

    def get(self, case_id: str) -> Case:
        try:
            return self._cases[case_id]
        except KeyError:
            raise CaseNotFound(case_id) from None

    def list(self, status: str | None = None) -> list[Case]:
        return [c for c in self._cases.values() if status is None or c.status == status]

    def open_cases(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout_s: float = 600.0) -> int:
        """Wait until no case is running; returns how many still are when the time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(list(self._tasks.values()), timeout=deadline - loop.time())
        return len(self._tasks)
