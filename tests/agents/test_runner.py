"""The case state machine against the real platform and policy, with scripted planner output."""

from __future__ import annotations

import asyncio
import socket

import httpx

from opsagent.agents.case import CaseStatus
from opsagent.agents.tracing.records import ActionEvent, ApprovalEvent, CaseEvent, PlannerCallEvent
from opsagent.evals.gold import gold_step
from opsagent.policy.identity import Identity, Role
from opsagent.tools.registry import ToolRegistry
from tests.fakes.planners import RawPlanner

ALICE = Identity(name="alice", roles=frozenset({Role.approver}))

UNKNOWN = {"scale_check": "unknown"}


def _carrier(platform, shipment_id):
    return httpx.get(f"{platform.base_urls['tms']}/shipments/{shipment_id}").json()


def test_gold_run_resolves_and_opens_the_dispute(harness, instance, platform):
    inst = instance(scale_ok=True)
    h = harness([gold_step] * 3)
    case = h.run(inst)
    h.engine.assert_done()
    assert case.status == CaseStatus.resolved, case.reason
    assert [s.tool for s in case.steps] == inst.gold_tools
    assert all(s.verdict == "allow" and s.executed and s.ok for s in case.steps)
    assert _carrier(platform, inst.entities["shipment_id"])["open_dispute_id"] is not None
    assert case.last_write_at is not None and case.latency_s > 0
    statuses = [e.status for e in h.traces.of_type(CaseEvent)]
    assert statuses[0] == "received" and statuses[-1] == "resolved"
    calls = h.traces.of_type(PlannerCallEvent)
    # the resolving write ends it: no 4th model call, the finish is traced as the playbook's rule
    assert [c.decided_by for c in calls] == ["model", "model", "model", "rule"]
    actions = h.traces.of_type(ActionEvent)
    assert [(a.tool, a.writes) for a in actions] == [
        ("wms_get_shipment", False), ("tms_get_shipment", False), ("tms_open_weight_dispute", True)]
    assert all(a.policy_version == h.policy.config.version for a in actions)
    # the cluster-wide rate limit was consulted (and counted) for every allowed call
    assert all(u["limit"] == 600 and not u["exceeded"] for a in actions for u in a.limits)
    assert all(a.limits for a in actions)


def test_gold_run_escalates_when_the_scale_failed(harness, instance, platform):
    inst = instance(scale_ok=False)
    h = harness([gold_step] * 3)
    case = h.run(inst)
    h.engine.assert_done()
    assert case.status == CaseStatus.escalated and "Scale check failed" in case.reason
    assert _carrier(platform, inst.entities["shipment_id"])["open_dispute_id"] is None


def _reads(sid):
    return [{"tool": "wms_get_shipment", "args": {"shipment_id": sid}},
            {"tool": "tms_get_shipment", "args": {"shipment_id": sid}}]


def _adjust(sid, kg=1.0):
    return {"tool": "tms_adjust_billed_weight",
            "args": {"shipment_id": sid, "billed_weight_kg": kg, "reason": "fix it"}}


def test_high_risk_action_pauses_for_approval_and_does_not_run(harness, instance, platform):
    inst = instance()
    sid = inst.entities["shipment_id"]
    before = _carrier(platform, sid)["billed_weight_kg"]
    h = harness([], planner=RawPlanner([*_reads(sid), _adjust(sid)]))
    case = h.run(inst)
    assert case.status == CaseStatus.awaiting_approval
    held = case.steps[-1]
    assert held.verdict == "require_approval" and not held.executed and held.approval_id
    assert _carrier(platform, sid)["billed_weight_kg"] == before
    (approval,) = h.traces.of_type(ApprovalEvent)
    assert approval.status == "pending" and approval.approval_id == held.approval_id
    assert approval.preview["dry_run"] is True and approval.risk == "high"
    action = h.traces.of_type(ActionEvent)[-1]
    assert action.decision == "require_approval" and not action.executed and action.dry_run
    assert action.result["dry_run"] is True and "diff" in action.result  # the preview an approver sees
    assert h.traces.of_type(CaseEvent)[-1].status == "awaiting_approval"
    assert h.resume(case).status == CaseStatus.awaiting_approval  # still pending: nothing moves


def test_approved_action_runs_once_then_the_case_continues(harness, instance, platform):
    inst = instance()
    sid = inst.entities["shipment_id"]
    finish = {"tool": "finish", "status": "escalated", "reason": "billed weight corrected"}
    h = harness([], planner=RawPlanner([*_reads(sid), _adjust(sid, 1.25), finish]))
    case = h.run(inst)
    approval = h.service.get_approval(case.steps[-1].approval_id)
    h.service.decide_approval(approval.approval_id, identity=ALICE, approve=True,
                              args_digest=approval.args_digest)
    case = h.resume(case)
    assert case.status == CaseStatus.escalated and case.reason == "billed weight corrected"
    assert case.steps[-1].executed and case.steps[-1].ok and case.steps[-1].verdict == "allow"
    assert _carrier(platform, sid)["billed_weight_kg"] == 1.25
    statuses = [(a.status, a.approver) for a in h.traces.of_type(ApprovalEvent)]
    assert statuses == [("pending", None), ("approved", "alice")]
    executed = [a for a in h.traces.of_type(ActionEvent) if a.tool == "tms_adjust_billed_weight"]
    assert [(a.decision, a.executed) for a in executed] == [("require_approval", False), ("allow", True)]
    assert "approved by alice" in executed[-1].reasons[0]
    h.resume(case)  # resuming a finished case does nothing: no second write
    assert len([a for a in h.traces.of_type(ActionEvent) if a.executed and a.writes]) == 1


def test_rejected_action_never_runs_and_the_planner_is_told(harness, instance, platform):
    inst = instance()
    sid = inst.entities["shipment_id"]
    before = _carrier(platform, sid)["billed_weight_kg"]
    finish = {"tool": "finish", "status": "escalated", "reason": "human said no"}
    planner = RawPlanner([*_reads(sid), _adjust(sid), finish])
    h = harness([], planner=planner)
    case = h.run(inst)
    approval = h.service.get_approval(case.steps[-1].approval_id)
    h.service.decide_approval(approval.approval_id, identity=ALICE, approve=False,
                              args_digest=approval.args_digest, reason="billed weight is right")
    case = h.resume(case)
    assert case.status == CaseStatus.escalated and not case.steps[-1].executed
    assert "billed weight is right" in case.steps[-1].error
    assert _carrier(platform, sid)["billed_weight_kg"] == before
    assert [a.status for a in h.traces.of_type(ApprovalEvent)] == ["pending", "rejected"]


def test_denied_calls_are_traced_and_fed_back(harness, instance, platform):
    inst = instance()
    sid = inst.entities["shipment_id"]
    steps = [
        {"tool": "tms_withdraw_weight_dispute", "args": {"dispute_id": "WD-1"}},
        {"tool": "rm_rf", "args": {}},
        {"tool": "wms_get_shipment", "args": {"shipment_id": "SHP-000001"}},
        {"tool": "finish", "status": "escalated", "reason": "gave up"},
    ]
    h = harness([], planner=RawPlanner(steps))
    case = h.run(inst)
    assert case.status == CaseStatus.escalated
    assert [s.verdict for s in case.steps] == ["deny", "deny", "deny"]
    assert not any(s.executed for s in case.steps)
    denied = h.traces.of_type(ActionEvent)
    assert all(a.decision == "deny" and a.reasons and not a.executed for a in denied)
    assert "outside case" in denied[2].reasons[0] and sid in denied[2].reasons[0]


def test_the_planner_rejects_output_outside_its_grammar(harness, instance):
    """An engine that ignores the grammar (here: a tool the class may not use) gets nowhere:
    the planner reports the output unusable and the policy is never even asked."""
    bad = {"evidence": UNKNOWN, "tool": "tms_withdraw_weight_dispute", "args": {"dispute_id": "WD-1"}}
    h = harness([bad, bad])
    case = h.run(instance())
    h.engine.assert_done()
    assert case.status == CaseStatus.escalated and "outside its schema" in case.reason
    assert case.steps == [] and h.traces.of_type(ActionEvent) == []


def test_unusable_planner_output_escalates_after_two(harness, instance):
    h = harness(["{not json", '{"tool": "finish", "status": "resolved"'])
    case = h.run(instance())
    h.engine.assert_done()
    assert case.status == CaseStatus.escalated and "planner output unusable" in case.reason
    assert case.steps == []


def test_engine_failure_fails_the_case_with_its_cause(harness, instance):
    h = harness([gold_step])  # the second call finds no step left and raises
    case = h.run(instance())
    assert case.status == CaseStatus.failed
    assert "UnexpectedEngineCall" in case.reason and case.finished_at is not None


def test_step_budget_exhausted_escalates(harness, instance):
    inst = instance()
    sid = inst.entities["shipment_id"]
    bad = {"tool": "wms_request_rescan", "args": {"shipment_id": sid, "reason": "x", "priority": "bogus"}}
    h = harness([], planner=RawPlanner([bad] * 3), max_steps=3)
    case = h.run(inst)
    assert case.status == CaseStatus.escalated and "within 3 steps" in case.reason


def test_system_down_is_an_observation_not_a_crash(harness, registry, instance):
    """The carrier is unreachable: the read fails, the planner is told, the case escalates."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = ToolRegistry(registry.specs(), {**registry.base_urls, "tms": closed})
    h = harness([gold_step] * 3, registry=down)
    case = h.run(instance())
    h.engine.assert_done()
    assert case.status == CaseStatus.escalated and "could not be read" in case.reason
    failed = case.steps[-1]
    assert failed.tool == "tms_get_shipment" and failed.executed and not failed.ok and failed.error
    assert h.engine.requests[-1].messages[-1].content.startswith("tms_get_shipment failed")


# --- autonomy modes: enforced by the policy, carried out by the runner ------------------------

def _disputes(platform, sid):
    rows = httpx.get(f"{platform.base_urls['tms']}/_admin/snapshot").json()["weight_disputes"]
    return [r for r in rows if r["shipment_id"] == sid]


def test_shadow_mode_proposes_every_write_and_writes_nothing(harness, instance, platform):
    inst = instance(scale_ok=True)
    sid = inst.entities["shipment_id"]
    before = _carrier(platform, sid)
    h = harness([gold_step] * 3, mode="shadow")
    case = h.run(inst)
    h.engine.assert_done()
    assert case.status == CaseStatus.proposed and case.outcome == "resolved", case.reason
    assert case.status.final and "nothing written; proposed resolved" in case.reason
    assert _carrier(platform, sid) == before and _disputes(platform, sid) == []  # records untouched
    assert case.last_write_at is None
    proposal = case.steps[-1]
    assert (proposal.tool, proposal.verdict, proposal.executed, proposal.ok) == (
        "tms_open_weight_dispute", "propose", False, True)
    # the planner saw what the write would have returned: the dispute record of the dry run
    assert proposal.result["claimed_weight_kg"] == inst.facts["scanned_weight_kg"]
    actions = h.traces.of_type(ActionEvent)
    assert [(a.decision, a.executed, a.dry_run, a.autonomy_mode) for a in actions] == [
        ("allow", True, False, "shadow"), ("allow", True, False, "shadow"), ("propose", False, True, "shadow")]
    assert "shadow mode" in actions[-1].reasons[0] and actions[-1].result["dry_run"] is True
    final = h.traces.of_type(CaseEvent)[-1]
    assert (final.status, final.outcome) == ("proposed", "resolved")
    assert h.traces.of_type(ApprovalEvent) == []


def test_shadow_mode_never_runs_a_high_risk_write_even_approved(harness, instance, platform):
    inst = instance()
    sid = inst.entities["shipment_id"]
    before = _carrier(platform, sid)["billed_weight_kg"]
    finish = {"tool": "finish", "status": "escalated", "reason": "rebilled"}
    h = harness([], planner=RawPlanner([*_reads(sid), _adjust(sid, 2.0), finish]), mode="shadow")
    case = h.run(inst)
    assert case.status == CaseStatus.proposed and case.outcome == "escalated"
    held = case.steps[2]
    assert (held.verdict, held.risk, held.executed, held.approval_id) == ("propose", "high", False, None)
    assert _carrier(platform, sid)["billed_weight_kg"] == before
    assert h.traces.of_type(ApprovalEvent) == []  # nothing to approve: it can never run in shadow


def test_shadow_case_without_a_write_ends_as_it_did(harness, instance):
    """Escalating without proposing anything withholds nothing: the case is simply escalated."""
    h = harness([gold_step] * 3, mode="shadow")
    case = h.run(instance(scale_ok=False))
    assert case.status == CaseStatus.escalated and case.outcome is None


def test_supervised_mode_holds_a_low_risk_write_for_approval(harness, instance, platform):
    inst = instance(scale_ok=True)
    sid = inst.entities["shipment_id"]
    h = harness([gold_step] * 3, mode="supervised")
    case = h.run(inst)
    assert case.status == CaseStatus.awaiting_approval
    held = case.steps[-1]
    assert (held.tool, held.verdict, held.risk, held.executed) == (
        "tms_open_weight_dispute", "require_approval", "low", False)
    assert "supervised mode" in held.reasons[0]
    assert _disputes(platform, sid) == []
    approval = h.service.get_approval(held.approval_id)
    assert approval.risk == "low" and approval.preview["dry_run"] is True
    h.service.decide_approval(approval.approval_id, identity=ALICE, approve=True,
                              args_digest=approval.args_digest)
    case = h.resume(case)
    h.engine.assert_done()
    assert case.status == CaseStatus.resolved and case.steps[-1].executed
    assert len(_disputes(platform, sid)) == 1
    runs = [a for a in h.traces.of_type(ActionEvent) if a.tool == "tms_open_weight_dispute"]
    assert [(a.decision, a.executed, a.autonomy_mode) for a in runs] == [
        ("require_approval", False, "supervised"), ("allow", True, "supervised")]


def test_a_class_demoted_to_shadow_while_held_never_writes_on_approval(harness, instance, platform):
    from tests.fakes.autonomy import TEST_ADMIN

    inst = instance(scale_ok=True)
    sid = inst.entities["shipment_id"]
    h = harness([gold_step] * 3, mode="supervised")
    case = h.run(inst)
    approval = h.service.get_approval(case.steps[-1].approval_id)
    change = asyncio.run(h.runner.policy.set_mode("weight_mismatch", "shadow", TEST_ADMIN, "test: demoted"))
    assert (change.from_mode, change.to_mode) == ("supervised", "shadow")
    modes = {m.exception_type: m.mode for m in asyncio.run(h.runner.policy.autonomy_status())}
    assert modes["weight_mismatch"] == "shadow"
    h.service.decide_approval(approval.approval_id, identity=ALICE, approve=True,
                              args_digest=approval.args_digest)
    case = h.resume(case)
    assert case.status == CaseStatus.proposed and case.steps[-1].verdict == "propose"
    assert _disputes(platform, sid) == []
