"""A case parked for a state database that stayed away is resumed by the case book itself once
the database answers again (no restart), and finishes exactly once."""

from __future__ import annotations

import asyncio

from opsagent.agents import runner as runner_module
from opsagent.agents.case import CaseStatus, ExceptionReport
from opsagent.agents.planner import PlannerTurn
from opsagent.agents.step_schema import PlannedStep
from opsagent.agents.tracing.records import CaseEvent
from opsagent.cluster import case_book as case_book_module
from opsagent.cluster.case_book import CaseBook
from opsagent.errors import StateUnavailable
from opsagent.tools.registry import ToolRegistry
from tests.fakes.book_ports import DenyingPolicy, ListTracer

REPORT = ExceptionReport(exception_type="weight_mismatch", description="billed too much",
                         entities={"shipment_id": "SHP-1"})


class _Planner:
    """One probe step, then finish."""

    def __init__(self) -> None:
        self.calls = 0

    async def plan(self, case, allowed_tools):
        self.calls += 1
        if case.steps:
            return PlannerTurn(step=PlannedStep(tool="finish", status="resolved", reason="probed"))
        return PlannerTurn(step=PlannedStep(tool="probe", args={}))


class _Policy(DenyingPolicy):
    """The policy's state database is away while `away` is set: every decision meets it."""

    def __init__(self) -> None:
        self.away = True
        self.answered = 0

    async def authorize(self, request):
        if self.away:
            raise StateUnavailable("state database test is unavailable")
        self.answered += 1
        return await super().authorize(request)


def test_a_parked_case_resumes_by_itself_once_the_database_answers(monkeypatch) -> None:
    monkeypatch.setattr(runner_module, "STATE_PAUSE_S", 0.01)
    monkeypatch.setattr(case_book_module, "PARKED_PAUSE_S", 0.05)

    async def scenario():
        policy, tracer = _Policy(), ListTracer()
        book = CaseBook(_Planner(), policy, executor=None, tracer=tracer, registry=ToolRegistry([], {}),
                        state_wait_s=0.1)
        case_id = (await book.submit(REPORT, "alice")).entry.case.case_id
        while not book.parked():  # waits through the outage, then is parked
            await asyncio.sleep(0.01)
        assert book.parked() == [case_id]
        await asyncio.sleep(0.3)  # still away: the watch leaves it parked (each try parks it again)
        assert not book.get(case_id).status.final and policy.answered == 0
        policy.away = False
        for _ in range(500):
            if book.get(case_id).status.final:
                break
            await asyncio.sleep(0.01)
        assert await book.drain(5) == 0
        return book, case_id, policy, tracer

    book, case_id, policy, tracer = asyncio.run(scenario())
    case = book.get(case_id)
    assert case.status == CaseStatus.resolved, case.reason
    assert book.parked() == [] and book.unparked >= 1
    assert policy.answered == 1 and [s.tool for s in case.steps] == ["probe"]  # decided once
    finals = [e for e in tracer.events if isinstance(e, CaseEvent) and e.status == "resolved"]
    assert len(finals) == 1  # finished once
