"""The fault test on PostgreSQL: a system whose state is a real PostgreSQL database loses the node
that hosts its policy and its case manager, and Ray restarts both on the other node.

A multi-node Ray cluster in this machine (a head and two workers that both may host the control
actors); the policy, case manager and trace writer start on worker A (soft node affinity). A batch
of weight mismatches runs (scripted gold planner; some need a high-risk rebill approved here);
with the first approvals decided and cases in flight, worker A is removed (no graceful stop).
Afterwards: the policy and the case manager run on worker B (another node id); every case reached
its gold end state once (each dispute and rebill applied once on the carrier's system, at most one
final trace event per case); the ledger holds one committed row per write that ran and nothing
else of the batch's writes; the approvals decided before the loss are still approved, one per
risky case.
"""

from __future__ import annotations

import time

import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from sqlalchemy import select

from opsagent.agents.case import ExceptionReport
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.views import query
from opsagent.cluster.config import PlannerConfig, SystemConfig
from opsagent.cluster.system import OpsAgentSystem
from opsagent.evals.bench.soak import GoldScriptedEngine, policy_with_rate
from opsagent.policy.state import open_state
from opsagent.policy.state._schema import ledger
from opsagent.tools.platform import inject_weight_mismatch
from tests.cluster.test_faults import _ask, _finish_with_approvals, _on_node, multi_node
from tests.fakes.autonomy import credential
from tests.fakes.held_planner import held_then_decided

pytestmark = [pytest.mark.ray, pytest.mark.postgres]

CASES, RISKY = 30, 4
WRITES = ("tms_open_weight_dispute", "tms_adjust_billed_weight")


@pytest.fixture(scope="module")
def cluster():
    yield from multi_node({}, {"control": 1, "planner": 1, "executor_slots": 4})


def _report(inst) -> ExceptionReport:
    return ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                           entities=inst.entities)


def _node_of(handle, workers):
    pid = _ask(handle, "pid")
    hosts = [w for w in workers if _on_node(pid, w)]
    assert len(hosts) == 1, f"{pid} on {len(hosts)} workers"
    return hosts[0].node_id


def test_policy_and_case_manager_restart_on_another_node_and_cases_finish_once(
        cluster, postgres_server, platform, tmp_path) -> None:
    c, (a, b) = cluster
    url = postgres_server.new_database("faults")
    good = inject_weight_mismatch(platform, count=CASES - RISKY, seed=8401, suspect_share=0.1)
    risky = inject_weight_mismatch(platform, count=RISKY, seed=8402, suspect_share=0.0)
    on_a = NodeAffinitySchedulingStrategy(node_id=a.node_id, soft=True)  # soft: elsewhere once A is gone
    config = SystemConfig(
        state=url, traces_dir=tmp_path / "traces", state_dir=tmp_path / "state", executors=2,
        executor_actor_options={"num_cpus": 0, "resources": {"executor_slots": 1}},
        control_actor_options={"num_cpus": 0, "resources": {"control": 0.01}, "scheduling_strategy": on_a},
        planner=PlannerConfig(replicas=2, actor_options={"num_cpus": 0, "resources": {"planner": 0.5}}))
    engine = GoldScriptedEngine(held_then_decided({r.entities["shipment_id"] for r in risky}))
    system = OpsAgentSystem(config, platform.registry(), engine=engine,
                            playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]},
                            policy=policy_with_rate(100_000)).start()
    try:
        h = system.handles
        _ask(h["policy"], "set_mode", "weight_mismatch", "autonomous", credential(url), "test: PG faults")
        before = {name: _node_of(h[name], [a, b]) for name in ("policy", "cases")}
        assert before == {"policy": a.node_id, "cases": a.node_id}
        order = sorted(good + risky, key=lambda inst: inst.entities["shipment_id"])  # risky spread out
        ids = {}
        for inst in order[:CASES // 2]:
            sub = _ask(h["cases"], "submit", _report(inst), "pg-faults", inst.entities["shipment_id"])
            ids[sub.entry.case.case_id] = inst
        approved_before = _approve_first_held(system, list(ids))
        for inst in order[CASES // 2:]:
            sub = _ask(h["cases"], "submit", _report(inst), "pg-faults", inst.entities["shipment_id"])
            ids[sub.entry.case.case_id] = inst
        in_flight = _ask(h["cases"], "open_cases")
        c.remove_node(a, allow_graceful=False)
        cases = _finish_with_approvals(system, list(ids))
        after = {name: _node_of(h[name], [b]) for name in ("policy", "cases")}
        recovered = _ask(h["cases"], "recovered_cases")
        approvals = {x.approval_id: x for x in _ask(h["policy"], "list_approvals")
                     if x.case_id in ids}
        system.flush_traces()
        _, finished = query(tmp_path / "traces", "SELECT case_id, count(*) FROM case_events WHERE status IN "
                                                 "('resolved', 'escalated', 'failed', 'proposed') GROUP BY 1")
        snapshot = platform.snapshot("tms")
    finally:
        system.stop()
    assert after == {"policy": b.node_id, "cases": b.node_id} and b.node_id != a.node_id
    assert in_flight > 0 and recovered > 0  # the restarted case manager resumed open cases
    risky_ids = {id(r) for r in risky}
    wrong = {cid: (case.status.value, case.reason) for cid, case in cases.items()
             if case.status.value != ("resolved" if id(ids[cid]) in risky_ids else ids[cid].expected_status)}
    assert not wrong, wrong
    assert all(n == 1 for n in dict(finished).values()), finished  # no case finished twice
    disputes: dict[str, int] = {}
    for row in snapshot["weight_disputes"]:
        disputes[row["shipment_id"]] = disputes.get(row["shipment_id"], 0) + 1
    for cid, case in cases.items():
        assert disputes.get(ids[cid].entities["shipment_id"], 0) == (case.status.value == "resolved")
    keys = [r["key"] for r in snapshot["idempotency_keys"] if r["key"].split(":")[0] in ids]
    ran = {f"{cid}:{s.step}" for cid, case in cases.items() for s in case.steps
           if s.executed and s.ok and s.tool in WRITES}
    assert sorted(keys) == sorted(ran)  # each write applied once, none that the cases do not show
    # the ledger: one committed row per write that ran (the policy's restart lost no settlement)
    with open_state(url).read() as conn:
        rows = conn.execute(select(ledger.c.case_id, ledger.c.step, ledger.c.state).where(
            ledger.c.tool.in_(WRITES), ledger.c.case_id.in_(list(ids)))).all()
    assert {f"{r.case_id}:{r.step}": r.state for r in rows} == {key: "committed" for key in ran}
    # the approvals: those decided before the loss still approved; one approved per risky case
    assert approved_before and all(approvals[x].status.value == "approved" for x in approved_before)
    approved_cases = [x.case_id for x in approvals.values() if x.status.value == "approved"]
    assert sorted(approved_cases) == sorted(cid for cid, inst in ids.items() if id(inst) in risky_ids)


def _approve_first_held(system, case_ids, timeout_s: float = 120.0) -> list[str]:
    """Wait for the held rebills among `case_ids` and approve them (before the node is lost)."""
    h = system.handles
    approver = credential(system.tokens_path, "pg-approver", ["approver"])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = [case for case in _ask(h["cases"], "list") if case.case_id in set(case_ids)
                and case.status.value == "awaiting_approval"]
        if held:
            decided = []
            for case in held:
                approval = _ask(h["policy"], "get_approval", case.steps[-1].approval_id)
                _ask(h["policy"], "decide_approval", approval.approval_id, approver, True, approval.args_digest)
                decided.append(approval.approval_id)
            return decided
        time.sleep(0.5)
    pytest.fail(f"no held rebill among the first {len(case_ids)} cases within {timeout_s} s")
