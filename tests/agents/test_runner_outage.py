"""The case runner while the state database is away (StateUnavailable from a checkpoint, the
policy or the executor): the case waits and goes on, never failed for it, each write applied once;
past its bound it is parked, open, and recovered later."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from opsagent.agents import runner as runner_module
from opsagent.agents.case import Case, CaseStatus, ExceptionReport
from opsagent.agents.tracing.records import CaseEvent
from opsagent.errors import StateUnavailable
from opsagent.evals.gold import gold_step
from opsagent.policy.ledger import ActionKey
from opsagent.policy.records import args_digest


class Flaky:
    """A port whose methods named in `fail` raise StateUnavailable on those call numbers (1-based)
    without calling through: the database was away before anything was done."""

    def __init__(self, inner: Any, fail: dict[str, set[int]]) -> None:
        self.inner, self.fail, self.calls = inner, fail, {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)
        if name not in self.fail:
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            n = self.calls[name] = self.calls.get(name, 0) + 1
            if n in self.fail[name]:
                raise StateUnavailable(f"state database test is unavailable ({name} #{n})")
            return await method(*args, **kwargs)

        return call


class Checkpoints:
    """The case store port: keeps the last checkpoint of each case."""

    def __init__(self) -> None:
        self.stored: dict[str, Case] = {}

    async def checkpoint(self, case: Case) -> None:
        self.stored[case.case_id] = case.model_copy(deep=True)

    def cancel_reason(self, case_id: str) -> str | None:
        return None


@pytest.fixture(autouse=True)
def _short_pauses(monkeypatch) -> None:
    monkeypatch.setattr(runner_module, "STATE_PAUSE_S", 0.01)


def _report(inst) -> ExceptionReport:
    return ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                           entities=inst.entities)


def _disputes(platform, sid: str) -> int:
    return sum(1 for row in platform.snapshot("tms")["weight_disputes"] if row["shipment_id"] == sid)


def test_a_case_waits_through_outages_at_every_call_and_writes_once(harness, instance, platform) -> None:
    inst = instance(scale_ok=True)
    h = harness([gold_step] * 3)
    r = h.runner
    store = Checkpoints()
    # the write is step 3: its authorize (3rd call) meets the outage; its executor (3rd call) cannot
    # record the permit and sends nothing; settling it fails twice; checkpoints fail now and then
    r.policy = Flaky(r.policy, {"authorize": {3}, "settle": {1, 2}})
    r.executor = Flaky(r.executor, {"execute": {3}})
    r.cases = Flaky(store, {"checkpoint": {1, 4, 5, 9, 10}})
    case = asyncio.run(r.run(Case(report=_report(inst))))
    assert case.status == CaseStatus.resolved, case.reason
    assert store.stored[case.case_id].status == CaseStatus.resolved
    assert r.policy.calls["authorize"] == 5  # the write authorized again after its executor's outage
    assert _disputes(platform, inst.entities["shipment_id"]) == 1
    write = case.steps[-1]
    key = ActionKey(case.case_id, write.step, args_digest(write.tool, write.args))
    assert write.tool == "tms_open_weight_dispute" and h.policy.ledger.state(key) == "committed"
    assert [e.status for e in h.traces.of_type(CaseEvent)].count("resolved") == 1


def test_past_its_bound_a_case_is_parked_open_and_recovered_later(harness, instance, platform) -> None:
    inst = instance(scale_ok=True)
    h = harness([gold_step] * 3)
    r = h.runner
    store = Checkpoints()
    r.state_wait_s = 0.05
    r.policy = Flaky(r.policy, {"authorize": set(range(3, 1000))})  # away from the write on
    r.cases = store
    case = asyncio.run(r.run(Case(report=_report(inst))))
    assert not case.status.final and case.status != CaseStatus.failed  # parked, not failed
    assert case.steps[-1].verdict is None and _disputes(platform, inst.entities["shipment_id"]) == 0
    assert r.parked == {case.case_id}  # for whoever runs the cases to resume
    r.policy.fail["authorize"] = set()  # the database is back: the case manager recovers it
    case = asyncio.run(r.recover(case))
    assert case.status == CaseStatus.resolved, case.reason
    assert [s.tool for s in case.steps] == inst.gold_tools  # the unanswered step was not planned again
    assert _disputes(platform, inst.entities["shipment_id"]) == 1
    assert store.stored[case.case_id].status == CaseStatus.resolved


class _AwayCheckpoints(Checkpoints):
    """Checkpoints that fail while `away` is set, as the state database would."""

    away = False

    async def checkpoint(self, case: Case) -> None:
        if self.away:
            raise StateUnavailable("state database test is unavailable")
        await super().checkpoint(case)


class _CrashingPlanner:
    """The planner, but its call number `crash` raises an error of its own (the planner actor
    died) just as the state database goes away: the failure cannot be stored."""

    def __init__(self, inner: Any, store: _AwayCheckpoints, crash: int) -> None:
        self.inner, self.store, self.crash, self.calls = inner, store, crash, 0

    async def plan(self, case: Case, allowed: list[str]) -> Any:
        self.calls += 1
        if self.calls == self.crash:
            self.store.away = True
            raise RuntimeError("planner actor died")
        return await self.inner.plan(case, allowed)


def test_a_crash_while_the_database_is_away_parks_the_case_instead_of_losing_it(
        harness, instance, platform) -> None:
    """A port error (not the database) meets the outage when the runner records the failure: the
    case is parked at its last checkpoint, not left neither running nor parked, and recovered
    once the database is back."""
    inst = instance(scale_ok=True)
    h = harness([gold_step] * 3)
    r = h.runner
    store = _AwayCheckpoints()
    r.state_wait_s = 0.05
    r.cases = store
    r.planner = _CrashingPlanner(r.planner, store, crash=2)
    case = asyncio.run(r.run(Case(report=_report(inst))))
    assert not case.status.final, case.reason  # not `failed`: that could not be stored
    assert r.parked == {case.case_id}
    store.away = False
    case = asyncio.run(r.recover(store.stored[case.case_id]))
    assert case.status == CaseStatus.resolved, case.reason
    assert _disputes(platform, inst.entities["shipment_id"]) == 1
