"""Durable cases without Ray: a case book on a SQLite store is "crashed" mid-case (its task is
cancelled, so nothing after the last checkpoint is written) and a new book on the same store
resumes it from its last completed step; a write that was in flight is sent again with the same
idempotency key and the system of record applies it once."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import httpx
import pytest

from opsagent.errors import StateError

from opsagent.agents.case import CaseStatus, ExceptionReport
from opsagent.agents.executor import Executor
from opsagent.agents.local import LocalPolicy, LocalTracer
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.exporters import InMemoryExporter
from opsagent.cluster.case_book import CaseBook
from opsagent.cluster.case_store import CaseStore
from opsagent.evals.bench.soak import GoldScriptedEngine
from opsagent.errors import IdempotencyConflict
from opsagent.evals.gold import gold_step
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.identity import Identity, Role
from opsagent.policy.service import PolicyService
from opsagent.tools.platform import inject_weight_mismatch
from tests.fakes.autonomy import promoted
from tests.fakes.held_planner import held_then_decided

ALICE = Identity(name="alice", roles=frozenset({Role.approver}))
_SEEDS = itertools.count(61_000)


class Stuck:
    """An executor port that lets calls through until `stop_after(tool)`: that call reaches the
    system, then never returns (the process 'dies' holding it)."""

    def __init__(self, inner: Executor, tool: str | None = None) -> None:
        self.inner, self.tool, self.calls = inner, tool, []
        self.reached = asyncio.Event()

    async def execute(self, tool, args, **kw):
        self.calls.append((tool, kw.get("dry_run", False)))
        result = await self.inner.execute(tool, args, **kw)
        if tool == self.tool and not kw.get("dry_run"):
            self.reached.set()
            await asyncio.Event().wait()
        return result


class World:
    """What survives a crash: the store, the approvals, the systems of record, the permit key."""

    def __init__(self, root: Path, registry, planner_script) -> None:
        self.root, self.registry, self.script = root, registry, planner_script
        config = load_default_policy()
        self.engine = PolicyEngine(config, registry, autonomy=promoted(config))
        self.service = PolicyService(self.engine, ApprovalStore(root / "approvals.sqlite"))
        self.traces = InMemoryExporter()

    def book(self, stuck_on: str | None = None, planner_hangs: bool = False) -> tuple[CaseBook, Stuck]:
        executor = Stuck(Executor(self.registry, self.engine.verifier), stuck_on)
        # answers every call: a restarted book plans again for as many steps as the case has left,
        # and the tests check what ran (once) and where each case ended
        planner = Planner(GoldScriptedEngine(self.script), builtin_playbooks(), self.registry)
        if planner_hangs:
            planner = _Hanging()
            executor.reached = planner.reached
        book = CaseBook(planner, LocalPolicy(self.service), executor, LocalTracer(self.traces),
                        self.registry, store=CaseStore(self.root / "cases.sqlite"))
        return book, executor


class _Hanging:
    def __init__(self) -> None:
        self.reached = asyncio.Event()

    async def plan(self, case, allowed_tools):
        self.reached.set()
        await asyncio.Event().wait()


def _report(inst) -> ExceptionReport:
    return ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                           entities=inst.entities)


def _disputes(platform, sid):
    return [r for r in platform.snapshot("tms")["weight_disputes"] if r["shipment_id"] == sid]


async def _crash(book: CaseBook, reached: asyncio.Event) -> None:
    """Once the case is stuck where the test wants it, stop every running case where it stands,
    as a killed process would."""
    await asyncio.wait_for(reached.wait(), 30)
    tasks = list(book._tasks.values())
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def mismatch(platform):
    return lambda: inject_weight_mismatch(platform, count=1, seed=next(_SEEDS), suspect_share=0.0)[0]


def test_a_write_in_flight_at_the_crash_is_applied_once_on_recovery(tmp_path, registry, platform, mismatch):
    inst = mismatch()
    sid = inst.entities["shipment_id"]
    world = World(tmp_path, registry, gold_step)

    async def scenario():
        first, executor = world.book(stuck_on="tms_open_weight_dispute")
        submitted = await first.submit(_report(inst), "ops", "key-1")
        await _crash(first, executor.reached)
        assert ("tms_open_weight_dispute", False) in executor.calls  # it reached the system
        assert len(_disputes(platform, sid)) == 1
        case_id = submitted.entry.case.case_id
        second, executor = world.book()
        assert second.recovered == 1
        assert second.get(case_id).status == CaseStatus.executing  # as checkpointed
        assert await second.drain(30) == 0
        return second.get(case_id), executor

    case, executor = asyncio.run(scenario())
    assert case.status == CaseStatus.resolved, case.reason
    assert executor.calls == [("tms_open_weight_dispute", False)]  # resumed at the write, not before
    assert len(_disputes(platform, sid)) == 1  # the replay was answered, not applied
    dispute = case.steps[-1].result
    assert dispute["dispute_id"] == _disputes(platform, sid)[0]["dispute_id"]
    keys = [r for r in platform.snapshot("tms").get("idempotency_keys", [])
            if r["key"].startswith(case.case_id)]
    assert len(keys) == len({r["key"] for r in keys}) == 1


def test_a_case_crashed_while_planning_plans_again_from_its_recorded_steps(tmp_path, registry, platform,
                                                                          mismatch):
    inst = mismatch()
    world = World(tmp_path, registry, gold_step)

    async def scenario():
        first, stuck = world.book(planner_hangs=True)
        case_id = (await first.submit(_report(inst))).entry.case.case_id
        await _crash(first, stuck.reached)
        second, executor = world.book()
        assert await second.drain(30) == 0
        return second.get(case_id), executor

    case, executor = asyncio.run(scenario())
    assert case.status == CaseStatus.resolved
    assert [s.tool for s in case.steps] == ["wms_get_shipment", "tms_get_shipment", "tms_open_weight_dispute"]
    assert len(_disputes(platform, inst.entities["shipment_id"])) == 1


def test_submission_keys_survive_a_restart(tmp_path, registry, mismatch):
    inst, other = mismatch(), mismatch()
    world = World(tmp_path, registry, gold_step)

    async def scenario():
        first, stuck = world.book(planner_hangs=True)
        created = await first.submit(_report(inst), "ops", "k")
        await _crash(first, stuck.reached)
        second, stuck = world.book(planner_hangs=True)
        again = await second.submit(_report(inst), "ops", "k")
        with pytest.raises(IdempotencyConflict):
            await second.submit(_report(other), "ops", "k")
        other_submitter = await second.submit(_report(inst), "someone-else", "k")
        await _crash(second, stuck.reached)
        return created, again, other_submitter

    created, again, other_submitter = asyncio.run(scenario())
    assert created.created and not again.created
    assert again.entry.case.case_id == created.entry.case.case_id
    assert other_submitter.created and other_submitter.entry.case.case_id != created.entry.case.case_id


def test_a_held_case_stays_held_across_a_restart_and_runs_once_when_approved(tmp_path, registry, platform,
                                                                            mismatch):
    inst = mismatch()
    sid = inst.entities["shipment_id"]
    world = World(tmp_path, registry, held_then_decided({sid}))

    async def scenario():
        first, _ = world.book()
        case_id = (await first.submit(_report(inst))).entry.case.case_id
        await first.drain(30)
        assert first.get(case_id).status == CaseStatus.awaiting_approval
        second, _ = world.book()
        await second.drain(30)
        held = second.get(case_id)
        assert held.status == CaseStatus.awaiting_approval  # pending: nothing ran
        approval = world.service.get_approval(held.steps[-1].approval_id)
        world.service.decide_approval(approval.approval_id, identity=ALICE, approve=True,
                                      args_digest=approval.args_digest)
        third, executor = world.book()  # decided while no case manager ran: picked up on start
        await third.drain(30)
        return third.get(case_id), executor

    case, executor = asyncio.run(scenario())
    assert case.status == CaseStatus.resolved, case.reason
    assert [c for c in executor.calls if c == ("tms_adjust_billed_weight", False)] == [
        ("tms_adjust_billed_weight", False)]
    assert len(_disputes(platform, sid)) == 1


def test_final_cases_are_not_run_again(tmp_path, registry, platform, mismatch):
    inst = mismatch()
    world = World(tmp_path, registry, gold_step)

    async def scenario():
        first, _ = world.book()
        case_id = (await first.submit(_report(inst))).entry.case.case_id
        await first.drain(30)
        second, executor = world.book()
        await second.drain(5)
        return first.get(case_id), second.get(case_id), second, executor

    before, after, second, executor = asyncio.run(scenario())
    assert before.status == after.status == CaseStatus.resolved
    assert second.recovered == 0 and executor.calls == []
    assert second.counts() == {"resolved": 1}


def test_a_store_that_cannot_be_opened_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StateError, match="state URL sqlite:///.*file/cases.sqlite"):
        CaseStore(blocker / "cases.sqlite")
    (tmp_path / "bad.sqlite").write_text("this is not a database" * 100)
    with pytest.raises(StateError, match="cannot open the state database .*bad.sqlite: file is not a database"):
        CaseStore(tmp_path / "bad.sqlite")


def test_the_platform_answers_a_replayed_key_with_the_original_result(platform, mismatch):
    inst = mismatch()
    sid = inst.entities["shipment_id"]
    url = f"{platform.base_urls['tms']}/shipments/{sid}/weight-disputes"
    body = {"claimed_weight_kg": 1.0, "reason": "replay test"}
    first = httpx.post(url, json=body, headers={"Idempotency-Key": "replay-1"})
    second = httpx.post(url, json=body, headers={"Idempotency-Key": "replay-1"})
    assert first.status_code == 201, first.text
    assert second.json() == first.json() and second.headers.get("Idempotent-Replayed") == "true"
    assert len(_disputes(platform, sid)) == 1
