"""The case manager actor: a thin Ray shell around `CaseBook` (cluster/case_book.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, TypeVar

import ray

from opsagent.agents.case import Case
from opsagent.agents.runner import STATE_WAIT_S
from opsagent.cluster.actor_calls import ActorPort
from opsagent.cluster.adapters import AckTally, ExecutorPool, PlannerPool, TraceHandle
from opsagent.cluster.case_book import CaseBook
from opsagent.cluster.case_query import CaseQuery
from opsagent.cluster.case_records import CaseEntry, CaseLease, CasePage
from opsagent.cluster.case_store import CaseStore
from opsagent.cluster.config import ExecutorAutoscalingConfig
from opsagent.cluster.executor_scaling import ExecutorPoolStatus
from opsagent.cluster.metrics import Metrics
from opsagent.cluster.observe import CaseMetrics, MeteredTracer
from opsagent.tools.registry import ToolRegistry

T = TypeVar("T")


@ray.remote
class CaseManager(CaseBook):
    """Owns the cases in flight. With `state` (a state URL or an SQLite path) every case is kept in
    the state database, and with `lease` it is the one case manager of that database (a second
    system on it waits for, then refuses, the lease; see CaseStore.hold):
    restarted (it is created with `max_restarts`), the actor loads them and resumes each open
    case from its last completed step. It holds the open cases and the `case_cache` most recently
    finished ones in memory; the store answers for the rest."""

    def __init__(self, planner: Any, policy: Any, executors: list[Any], tracer: Any,
                 registry: ToolRegistry, max_steps: int = 6, max_open_cases: int = 1000,
                 state: str | None = None,
                 *, executor_factory: Any = None,
                 executor_scaling: ExecutorAutoscalingConfig | None = None,
                 case_cache: int = 1000, lease: CaseLease | None = None,
                 state_wait_s: float = STATE_WAIT_S) -> None:
        store = CaseStore(state) if state else None
        self._executors = ExecutorPool(executors, factory=executor_factory, scaling=executor_scaling)
        cases = CaseMetrics(Metrics(["opsagent_cases_received_total", "opsagent_cases_total",
                                     "opsagent_cases_open", "opsagent_case_duration_seconds"]))
        super().__init__(PlannerPool(planner), ActorPort(policy), self._executors,
                         MeteredTracer(TraceHandle(tracer), cases), registry, max_steps=max_steps,
                         max_open_cases=max_open_cases, store=store, case_cache=case_cache,
                         lease=lease if store is not None else None, state_wait_s=state_wait_s)

    # The book's reads, off the event loop: Ray runs a plain method of an async actor on its
    # event loop (ray._private.async_compat.sync_to_async), so a store read waiting on a database
    # that does not answer (a connect waits up to 10 s) would hold up every other call, the
    # runners' checkpoints and the health probe's open_cases included. Each runs in a worker thread.

    async def entry(self, case_id: str) -> CaseEntry:
        return await self._off_loop(CaseBook.entry, case_id)

    async def get(self, case_id: str) -> Case:
        return await self._off_loop(CaseBook.get, case_id)

    async def list(self, status: str | None = None) -> list[Case]:
        return await self._off_loop(CaseBook.list, status)

    async def page(self, query: CaseQuery) -> CasePage:
        return await self._off_loop(CaseBook.page, query)

    async def classes(self) -> list[str]:
        return await self._off_loop(CaseBook.classes)

    async def counts(self) -> dict[str, int]:
        return await self._off_loop(CaseBook.counts)

    async def _off_loop(self, read: Callable[..., T], *args: Any) -> T:
        if self._store is None:  # everything is in memory: nothing to wait for
            return read(self, *args)
        return await asyncio.to_thread(read, self, *args)

    def release_lease(self) -> bool:
        """Give up the case manager's lease (a clean stop: the next system need not wait)."""
        store = self._store
        return store is not None and store.owner is not None and store.release_lease(store.owner)

    def recovered_cases(self) -> int:
        """Open cases this incarnation resumed from the store."""
        return self.recovered

    def parked_cases(self) -> list[str]:
        """Cases parked for a state database that stayed away (resumed once it answers)."""
        return self.parked()

    def executor_pool(self) -> ExecutorPoolStatus:
        """The executor pool now: size, calls in flight, bounds, its last size changes."""
        return self._executors.status()

    def executor_handles(self) -> list[Any]:
        """The executor actors in the pool now (an autoscaled pool adds and removes some)."""
        return self._executors.handles

    def trace_acks(self) -> AckTally:
        """The trace events this incarnation had acknowledged by the trace writer."""
        return self._tracer.tally

    def pid(self) -> int:
        return os.getpid()
