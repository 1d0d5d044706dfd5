"""Actor round trips per executed step (ARCHITECTURE.md): every call the runner makes on a port
is one actor call in the cluster (`cluster/adapters.py`, `cluster/actor_calls.ActorPort`: one
`call_actor` each; the case store is the case manager itself, no round trip). Counted here on a
gold weight-mismatch run with in-process ports."""

from __future__ import annotations

import inspect
from typing import Any

from opsagent.agents.case import CaseStatus
from opsagent.evals.gold import gold_step

ROUND_TRIPS_PER_EXECUTED_STEP = 8
"""Trace the planning status, plan, trace the planner call, authorize, trace the executing status,
execute, settle the permit, trace the action. Stated in ARCHITECTURE.md; must not grow."""


class _Counting:
    """A port whose async calls are logged as `port.method`."""

    def __init__(self, port: Any, name: str, log: list[str]) -> None:
        self._port, self._name, self._log = port, name, log

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self._port, attr)
        if not inspect.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            self._log.append(f"{self._name}.{attr}")
            return await target(*args, **kwargs)

        return call


def test_an_executed_step_costs_eight_round_trips(harness, instance) -> None:
    h = harness([gold_step] * 3)
    log: list[str] = []
    r = h.runner
    r.planner, r.policy = _Counting(r.planner, "planner", log), _Counting(r.policy, "policy", log)
    r.executor, r.tracer = _Counting(r.executor, "executor", log), _Counting(r.tracer, "tracer", log)
    case = h.run(instance(scale_ok=True))
    assert case.status == CaseStatus.resolved and len(case.steps) == 3 and all(s.executed for s in case.steps)

    # the calls from one planning turn to the next: the first three turns each executed a step
    starts = [i - 1 for i, call in enumerate(log) if call == "planner.plan"]  # the planning status before
    steps = [log[a:b] for a, b in zip(starts, starts[1:], strict=False)]
    assert len(steps) == 3
    for step in steps:
        assert step == ["tracer.export", "planner.plan", "tracer.export", "policy.authorize", "tracer.export",
                        "executor.execute", "policy.settle", "tracer.export"]
        assert len(step) == ROUND_TRIPS_PER_EXECUTED_STEP
    # per case, besides its steps: the received status, the allowlist, the finishing turn and the end
    assert log[:2] == ["tracer.export", "policy.allowed_tools"]
    assert log[starts[-1]:] == ["tracer.export", "planner.plan", "tracer.export", "policy.withdraw_approvals",
                                "tracer.export"]
