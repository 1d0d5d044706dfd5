"""The state database (a real PostgreSQL server) goes away while a system on Ray has cases in
flight, and comes back on the same data and port: the cases wait, then finish exactly once.

A batch of weight mismatches (scripted gold planner) is submitted; with cases open, the server is
stopped (`pg_ctl stop -m fast`: every session cut; `-m immediate`: as in a crash, recovered from
its WAL at the next start), kept down a few seconds, and started again.
While it is down a submission is refused with StateUnavailable (the API's 503) and nothing is
stored; retried with its idempotency key afterwards it opens its case once. Then: every case
reached its gold end state, none failed, each shipment's dispute was opened exactly once on the
carrier's system (and one idempotency record per write), and the trace holds one final case
event per case.
"""

from __future__ import annotations

import time

import pytest
import ray

from opsagent.agents.case import ExceptionReport
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.views import query
from opsagent.cluster.api.http_errors import status_of
from opsagent.cluster.config import PlannerConfig, SystemConfig
from opsagent.cluster.system import OpsAgentSystem
from opsagent.errors import StateUnavailable
from opsagent.evals.bench.soak import GoldScriptedEngine, policy_with_rate
from opsagent.tools.platform import inject_weight_mismatch
from tests.fakes.autonomy import credential
from tests.postgres import private_server

pytestmark = [pytest.mark.ray, pytest.mark.postgres]

CASES = 24
DOWN_S = 4.0
FINAL = {"resolved", "escalated", "failed", "proposed"}


@pytest.fixture
def server():
    """A PostgreSQL server of this test's own (the session's must not go away under others)."""
    yield from private_server()


def _report(inst) -> ExceptionReport:
    return ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                           entities=inst.entities)


def _refusal(ref) -> BaseException:
    """The opsagent error a Ray call raised (Ray wraps it), or fail."""
    try:
        ray.get(ref, timeout=60)
    except Exception as exc:  # noqa: BLE001 - unwrapped below
        return getattr(exc, "cause", None) or exc
    pytest.fail("the call succeeded with the state database down")


@pytest.mark.parametrize("stop", ["fast", "immediate"])
def test_cases_in_flight_wait_for_the_database_and_finish_exactly_once(
        ray_runtime, server, platform, tmp_path, stop) -> None:
    url = server.new_database("outage")
    batch = inject_weight_mismatch(platform, count=CASES + 1, seed=8301 if stop == "fast" else 8302,
                                   suspect_share=0.2)
    late = batch.pop()  # submitted while the database is down, then again with its key
    config = SystemConfig(state=url, traces_dir=tmp_path / "traces", state_dir=tmp_path / "state",
                          executors=2, executor_actor_options={"num_cpus": 0},
                          control_actor_options={"num_cpus": 0},
                          planner=PlannerConfig(actor_options={"num_cpus": 0}))
    system = OpsAgentSystem(config, platform.registry(), engine=GoldScriptedEngine(),
                            playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]},
                            policy=policy_with_rate(100_000)).start()
    try:
        h = system.handles
        ray.get(h["policy"].set_mode.remote("weight_mismatch", "autonomous", credential(url), "test: outage"))
        ids = {}
        for inst in batch:
            sub = ray.get(h["cases"].submit.remote(_report(inst), "outage-test", inst.entities["shipment_id"]))
            ids[sub.entry.case.case_id] = inst
        in_flight = ray.get(h["cases"].open_cases.remote())
        server.halt(stop)
        halted = time.monotonic()
        refused = _refusal(h["cases"].submit.remote(_report(late), "outage-test", late.entities["shipment_id"]))
        assert isinstance(refused, StateUnavailable), repr(refused)
        assert "is unavailable" in str(refused) and status_of(refused) == 503
        time.sleep(max(0.0, halted + DOWN_S - time.monotonic()))
        waiting = ray.get(h["cases"].open_cases.remote())
        server.start()
        again = ray.get(h["cases"].submit.remote(_report(late), "outage-test", late.entities["shipment_id"]))
        assert again.created  # the refused submission stored nothing: the retry opens the case
        ids[again.entry.case.case_id] = late
        assert not ray.get(h["cases"].submit.remote(_report(late), "outage-test",
                                                    late.entities["shipment_id"])).created
        cases = _wait_final(h["cases"], list(ids))
        system.flush_traces()
        disputes: dict[str, int] = {}
        snapshot = platform.snapshot("tms")
        for row in snapshot["weight_disputes"]:
            disputes[row["shipment_id"]] = disputes.get(row["shipment_id"], 0) + 1
        keys = [r["key"] for r in snapshot["idempotency_keys"] if r["key"].split(":")[0] in ids]
        _, finished = query(tmp_path / "traces", "SELECT case_id, count(*) FROM case_events WHERE status IN "
                                                 "('resolved', 'escalated', 'failed', 'proposed') GROUP BY 1")
    finally:
        system.stop()
    # the outage met cases in flight: they waited through it (a case cannot end while the
    # database is away: its final state is not stored), then went on
    assert in_flight >= waiting > 0, (in_flight, waiting)
    wrong = {cid: (c.status.value, ids[cid].expected_status, c.reason) for cid, c in cases.items()
             if c.status.value != ids[cid].expected_status}
    assert not wrong, wrong
    for cid, case in cases.items():
        sid = ids[cid].entities["shipment_id"]
        assert disputes.get(sid, 0) == (1 if case.status.value == "resolved" else 0), (cid, case.steps)
    assert len(keys) == len(set(keys))  # each write reached the carrier's system once
    assert dict(finished) == {cid: 1 for cid in ids}  # one final case event per case


def _wait_final(cases, case_ids, timeout_s: float = 300.0):
    deadline = time.monotonic() + timeout_s
    while True:
        held = {c.case_id: c for c in ray.get(cases.list.remote()) if c.case_id in set(case_ids)}
        if len(held) == len(case_ids) and all(c.status.value in FINAL for c in held.values()):
            return held
        if time.monotonic() > deadline:
            pytest.fail(f"not final after {timeout_s} s: "
                        f"{[(cid, c.status.value) for cid, c in held.items() if c.status.value not in FINAL]}")
        time.sleep(0.5)
