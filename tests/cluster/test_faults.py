"""Faults survived on a real multi-node Ray cluster (a head and two workers in this machine).

A batch of weight mismatches runs through the whole system (scripted gold planner; some cases
need a high-risk rebill that this test approves) while the test kills the planner actor, executor
actors, the policy actor and the trace writer (SIGKILL of their processes, or `ray.kill` with
restart) and removes a worker node. Afterwards: every case reached its gold outcome, no write was
applied twice (the carrier's disputes and idempotency ledger), every trace event the writer
acknowledged is in the store exactly once (and nothing else), and no high-risk action ran without
an approval.

Size: OPSAGENT_FAULT_CASES cases (default 120 for CI; the full run is 200 or more).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from opsagent.agents.case import ExceptionReport
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.report import UNSUPERVISED_HIGH_RISK
from opsagent.agents.tracing.views import query
from opsagent.cluster.adapters import AckTally
from opsagent.cluster.config import PlannerConfig, SystemConfig
from opsagent.cluster.runtime import LOOPBACK_ENV, NAMESPACE
from opsagent.cluster.system import OpsAgentSystem
from opsagent.evals.bench.soak import GoldScriptedEngine, policy_with_rate
from opsagent.tools.platform import inject_weight_mismatch
from tests.fakes.autonomy import credential
from tests.fakes.held_planner import held_then_decided

pytestmark = pytest.mark.ray

CASES = int(os.environ.get("OPSAGENT_FAULT_CASES", "120"))
RISKY = max(4, CASES // 12)  # need an approved high-risk rebill
RATE = 15.0  # submissions per second
FINAL = {"resolved", "escalated", "failed", "proposed"}


def multi_node(head: dict[str, float], worker: dict[str, float]) -> Iterator[tuple[Cluster, list]]:
    """A Ray cluster of a head and two worker nodes, one CPU each (`head`, `worker`: their custom
    resources), quick to notice a lost node, joined by this process; shut down afterwards."""
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": head, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
    workers = [c.add_node(num_cpus=1, resources=worker) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, namespace=NAMESPACE, log_to_driver=False,
             runtime_env={"env_vars": dict(LOOPBACK_ENV)})
    try:
        yield c, workers
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def cluster():
    yield from multi_node({"control": 1}, {"planner": 1, "executor_slots": 4})


@pytest.fixture(scope="module")
def batch(cluster, platform, tmp_path_factory):
    c, workers = cluster
    good = inject_weight_mismatch(platform, count=CASES - RISKY, seed=8101, suspect_share=0.1)
    risky = inject_weight_mismatch(platform, count=RISKY, seed=8102, suspect_share=0.0)
    root = tmp_path_factory.mktemp("faults")
    config = SystemConfig(
        traces_dir=root / "traces", state_dir=root / "state", executors=4,
        executor_actor_options={"num_cpus": 0, "resources": {"executor_slots": 1}},
        control_actor_options={"num_cpus": 0, "resources": {"control": 0.01}},
        planner=PlannerConfig(replicas=2, actor_options={"num_cpus": 0, "resources": {"planner": 0.5}}))
    engine = GoldScriptedEngine(held_then_decided({r.entities["shipment_id"] for r in risky}))
    system = OpsAgentSystem(config, platform.registry(), engine=engine,  # rate: no deny by load
                            playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]},
                            policy=policy_with_rate(100_000)).start()
    h = system.handles
    ray.get(h["policy"].set_mode.remote("weight_mismatch", "autonomous", credential(system.tokens_path), "test: fault batch"))
    chaos = _chaos(c, workers, system)
    everything = good + risky
    order = sorted(everything, key=lambda inst: inst.entities["shipment_id"])  # risky ones spread out
    ids: dict[str, object] = {}
    kills: list[str] = []
    t0 = time.monotonic()
    for i, inst in enumerate(order):
        report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                 entities=inst.entities)
        sub = ray.get(h["cases"].submit.remote(report, "fault-test", inst.entities["shipment_id"]))
        ids[sub.entry.case.case_id] = inst
        while chaos and i >= chaos[0][0] * len(order):
            _, name, act = chaos.pop(0)
            act()
            kills.append(name)
        time.sleep(max(0.0, t0 + (i + 1) / RATE - time.monotonic()))
    for _, name, act in chaos:
        act()
        kills.append(name)
    cases = _finish_with_approvals(system, list(ids))
    system.flush_traces()
    # the store and the acknowledgements at the same moment, before any test adds cases (the
    # case-manager kill test submits more, to the same store, in any order: pytest-randomly)
    acks = ray.get(h["cases"].trace_acks.remote())
    stored = [r[0] for r in query(root / "traces", "SELECT event_id FROM events")[1]]
    try:
        yield dict(system=system, ids=ids, cases=cases, good=good, risky=risky, kills=kills,
                   traces=root / "traces", acks=acks, stored=stored)
    finally:
        system.stop()


def _chaos(c, workers, system):
    """(fraction of the batch submitted, what, action) in order."""
    h = system.handles

    def sigkill(handle):
        def act():
            os.kill(_ask(handle, "pid"), signal.SIGKILL)
        return act

    def remove_busiest_worker():
        pids = [_ask(a, "pid") for a in [*h["planners"], *h["executors"]]]
        hosted = {id(w): sum(_on_node(pid, w) for pid in pids) for w in workers}
        victim = max(workers, key=lambda w: hosted[id(w)])
        assert hosted[id(victim)] > 0, "no planner or executor on either worker"
        c.remove_node(victim, allow_graceful=False)

    return [
        (0.10, "planner (ray.kill, restarted)", lambda: ray.kill(h["planners"][0], no_restart=False)),
        (0.20, "executor 0 (SIGKILL)", sigkill(h["executors"][0])),
        (0.25, "executor 1 (SIGKILL)", sigkill(h["executors"][1])),
        (0.35, "policy (SIGKILL)", sigkill(h["policy"])),
        (0.50, "trace writer (SIGKILL)", sigkill(h["tracer"])),
        (0.60, "worker node removed", remove_busiest_worker),
        (0.75, "planner 1 (SIGKILL)", sigkill(h["planners"][1])),
        (0.85, "trace writer again (ray.kill, restarted)", lambda: ray.kill(h["tracer"], no_restart=False)),
    ]


def _ask(handle, method: str, *args, attempts: int = 60):
    """`ray.get(handle.method.remote(*args))`, asked again while the actor is restarting."""
    for attempt in range(attempts):
        try:
            return ray.get(getattr(handle, method).remote(*args), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                ray.exceptions.GetTimeoutError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)


def _on_node(pid: int, node) -> bool:
    raylet = node.all_processes["raylet"][0].process.pid
    try:
        return any(p.pid == raylet for p in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def _finish_with_approvals(system, case_ids, timeout_s: float = 300.0):
    """Approve every held action as it appears and wait until every case is final."""
    h = system.handles
    approver = credential(system.tokens_path, "fault-approver", ["approver"])
    decided: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while True:
        cases = {c.case_id: c for c in _ask(h["cases"], "list") if c.case_id in set(case_ids)}
        for case in cases.values():
            if case.status == "awaiting_approval":
                approval_id = case.steps[-1].approval_id
                if approval_id not in decided:
                    approval = _ask(h["policy"], "get_approval", approval_id)
                    if approval.status == "pending":
                        _ask(h["policy"], "decide_approval", approval_id, approver, True,
                             approval.args_digest)
                    decided.add(approval_id)
                _ask(h["cases"], "resume", case.case_id)
        if len(cases) == len(case_ids) and all(c.status in FINAL for c in cases.values()):
            return cases
        if time.monotonic() > deadline:
            open_ = {cid: c.status.value for cid, c in cases.items() if c.status not in FINAL}
            pytest.fail(f"{len(open_)} cases not final after {timeout_s} s: {list(open_.items())[:10]}")
        time.sleep(0.5)


def test_every_case_reaches_its_gold_outcome_despite_the_faults(batch):
    assert len(batch["kills"]) == 8, batch["kills"]
    risky = {id(r) for r in batch["risky"]}
    wrong = {}
    for cid, case in batch["cases"].items():
        inst = batch["ids"][cid]
        expected = "resolved" if id(inst) in risky else inst.expected_status
        if case.status != expected:
            wrong[cid] = (case.status.value, expected, case.reason,
                          [(s.tool, s.verdict, s.executed, s.error) for s in case.steps])
    assert not wrong, wrong


def test_no_write_was_applied_twice(batch, platform):
    snapshot = platform.snapshot("tms")
    by_case = {cid: case for cid, case in batch["cases"].items()}
    disputes: dict[str, int] = {}
    for row in snapshot["weight_disputes"]:
        disputes[row["shipment_id"]] = disputes.get(row["shipment_id"], 0) + 1
    for cid, case in by_case.items():
        sid = batch["ids"][cid].entities["shipment_id"]
        assert disputes.get(sid, 0) == (1 if case.status == "resolved" else 0), (cid, case.steps)
    ledger = [r["key"] for r in snapshot["idempotency_keys"] if r["key"].split(":")[0] in by_case]
    assert len(ledger) == len(set(ledger))
    writes = [(cid, s) for cid, case in by_case.items() for s in case.steps
              if s.executed and s.tool in ("tms_open_weight_dispute", "tms_adjust_billed_weight")]
    applied = {f"{cid}:{s.step}" for cid, s in writes if s.ok}
    refused = {f"{cid}:{s.step}": s.error for cid, s in writes if not s.ok}
    # one ledger row per write that succeeded, none for one the system refused: nothing extra
    assert set(ledger) == applied, (set(ledger) ^ applied, refused)
    rebills = [k for k in ledger if by_case[k.split(":")[0]].steps[int(k.split(":")[1]) - 1].tool
               == "tms_adjust_billed_weight"]
    assert len(rebills) == len(batch["risky"])


def test_every_acknowledged_trace_event_is_stored_exactly_once(batch):
    stored = batch["stored"]
    assert len(stored) == len(set(stored))
    assert AckTally.of(stored) == batch["acks"]
    assert batch["acks"].count > 8 * CASES


def test_no_high_risk_action_ran_without_approval(batch):
    assert query(batch["traces"], UNSUPERVISED_HIGH_RISK)[1] == [(0,)]
    _, rows = query(batch["traces"], "SELECT count(DISTINCT case_id) FROM actions "
                                     "WHERE executed AND risk = 'high' AND NOT dry_run")
    assert rows == [(len(batch["risky"]),)]


def test_a_killed_case_manager_resumes_its_open_cases_from_the_store(batch, platform):
    """SIGKILL the case manager with cases in flight (the other tests read what the batch
    fixture recorded before, so they hold in any order); the restarted actor loads every case and submission key from cases.sqlite and finishes the open ones."""
    h = batch["system"].handles
    more = inject_weight_mismatch(platform, count=30, seed=8103, suspect_share=0.0)
    ids = {}
    for i, inst in enumerate(more):
        report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                 entities=inst.entities)
        sub = _ask(h["cases"], "submit", report, "fault-test-2", inst.entities["shipment_id"])
        ids[sub.entry.case.case_id] = inst
        if i == 20:
            os.kill(_ask(h["cases"], "pid"), signal.SIGKILL)
    first = more[0]
    again = _ask(h["cases"], "submit", ExceptionReport(
        exception_type=first.exception_type, description=first.description, entities=first.entities),
        "fault-test-2", first.entities["shipment_id"])
    assert not again.created and again.entry.case.case_id in ids  # the key survived the restart
    cases = _finish_with_approvals(batch["system"], list(ids))
    assert _ask(h["cases"], "recovered_cases") > 0
    assert {c.status.value for c in cases.values()} == {"resolved"}, {
        cid: (c.status.value, c.reason, [(s.step, s.tool, s.verdict, s.executed, s.ok, s.error)
                                         for s in c.steps])
        for cid, c in cases.items() if c.status != "resolved"}
    disputes: dict[str, int] = {}
    for row in platform.snapshot("tms")["weight_disputes"]:
        disputes[row["shipment_id"]] = disputes.get(row["shipment_id"], 0) + 1
    assert all(disputes.get(inst.entities["shipment_id"]) == 1 for inst in more)
    earlier = {c.case_id: c.status for c in _ask(h["cases"], "list") if c.case_id in batch["cases"]}
    assert earlier == {cid: c.status for cid, c in batch["cases"].items()}  # the first batch, reloaded
