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

Stopped for longer than `state_wait_s`, the cases in flight are parked; once the server is back the
case manager resumes them by itself (no restart), each finishing once. And a store read that waits
on a server that does not answer (a partition) holds up no other call to the case manager.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from opsagent.agents.case import ExceptionReport
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.tracing.views import query
from opsagent.cluster.api.http_errors import status_of
from opsagent.cluster.cases import CaseManager
from opsagent.cluster.config import PlannerConfig, SystemConfig
from opsagent.cluster.system import OpsAgentSystem
from opsagent.errors import StateUnavailable
from opsagent.evals.bench.soak import GoldScriptedEngine, policy_with_rate
from opsagent.tools.platform import inject_weight_mismatch
from opsagent.tools.registry import ToolRegistry
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
    system = _weight_system(platform, url, tmp_path)
    try:
        h = system.handles
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
        effects = _effects(platform, tmp_path / "traces", ids)
    finally:
        system.stop()
    # the outage met cases in flight: they waited through it (a case cannot end while the
    # database is away: its final state is not stored), then went on
    assert in_flight >= waiting > 0, (in_flight, waiting)
    _assert_each_case_once(cases, ids, effects)


def _weight_system(platform, url: str, tmp_path, **config: Any) -> OpsAgentSystem:
    """A started system on the state database `url`: weight_mismatch autonomous, its gold steps
    scripted, the actors taking no CPU of the 2-core machine."""
    settings = SystemConfig(state=url, traces_dir=tmp_path / "traces", state_dir=tmp_path / "state",
                            executors=2, executor_actor_options={"num_cpus": 0},
                            control_actor_options={"num_cpus": 0},
                            planner=PlannerConfig(actor_options={"num_cpus": 0}), **config)
    system = OpsAgentSystem(settings, platform.registry(), engine=GoldScriptedEngine(),
                            playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]},
                            policy=policy_with_rate(100_000)).start()
    try:
        ray.get(system.handles["policy"].set_mode.remote("weight_mismatch", "autonomous", credential(url),
                                                         "test: outage"))
    except BaseException:
        system.stop()
        raise
    return system


def _effects(platform, traces, ids) -> tuple[dict[str, int], list[str], list]:
    """What the cases `ids` did: disputes per shipment, the carrier's idempotency keys of their
    writes, and their final case events per case in the trace."""
    snapshot = platform.snapshot("tms")
    disputes: dict[str, int] = {}
    for row in snapshot["weight_disputes"]:
        disputes[row["shipment_id"]] = disputes.get(row["shipment_id"], 0) + 1
    keys = [r["key"] for r in snapshot["idempotency_keys"] if r["key"].split(":")[0] in ids]
    _, finished = query(traces, "SELECT case_id, count(*) FROM case_events WHERE status IN "
                                "('resolved', 'escalated', 'failed', 'proposed') GROUP BY 1")
    return disputes, keys, finished


def _assert_each_case_once(cases, ids, effects) -> None:
    """Every case ended as its gold says, with its write made once and one final event."""
    disputes, keys, finished = effects
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


PARK_CASES = 6
STATE_WAIT_S = 1.5


def test_cases_parked_by_a_long_outage_resume_by_themselves_once_it_is_over(
        ray_runtime, server, platform, tmp_path) -> None:
    """The database stays away longer than `state_wait_s`: the cases in flight are parked. Once it
    is back they resume without a restart of the case manager, and each finishes exactly once."""
    url = server.new_database("parked")
    batch = inject_weight_mismatch(platform, count=PARK_CASES, seed=8303, suspect_share=0.0)
    system = _weight_system(platform, url, tmp_path, state_wait_s=STATE_WAIT_S)
    try:
        h = system.handles
        manager_pid = ray.get(h["cases"].pid.remote())
        ids = {}
        for inst in batch:
            sub = ray.get(h["cases"].submit.remote(_report(inst), "parked-test", inst.entities["shipment_id"]))
            ids[sub.entry.case.case_id] = inst
        server.halt("fast")
        deadline = time.monotonic() + STATE_WAIT_S + 30
        parked: list[str] = []
        while time.monotonic() < deadline:  # every case open meets the outage, waits, is parked
            # in this order: with no case running, none can park, so the list read next is complete
            if ray.get(h["cases"].open_cases.remote()) == 0:
                parked = ray.get(h["cases"].parked_cases.remote())
                if parked:
                    break
            time.sleep(0.2)
        assert ray.get(h["cases"].open_cases.remote()) == 0, _where_they_wait(h)  # none stuck in a call
        assert parked and set(parked) <= set(ids), parked
        time.sleep(STATE_WAIT_S * 2)  # still away: the case manager's checks find it so
        assert ray.get(h["cases"].parked_cases.remote()) == parked
        server.start()
        try:
            cases = _wait_final(h["cases"], list(ids), timeout_s=120)
        except pytest.fail.Exception as exc:  # failed once in a whole-suite run: say where they wait
            raise AssertionError(f"{exc}\n{_where_they_wait(h)}") from None
        assert ray.get(h["cases"].parked_cases.remote()) == []
        assert ray.get(h["cases"].pid.remote()) == manager_pid  # not restarted: resumed by itself
        assert ray.get(h["cases"].recovered_cases.remote()) == 0
        system.flush_traces()
        effects = _effects(platform, tmp_path / "traces", ids)
    finally:
        system.stop()
    _assert_each_case_once(cases, ids, effects)


def _where_they_wait(h: dict[str, Any]) -> str:
    """Where the cases wait: the case manager's parked cases, its watch, the stack of each case
    task and every thread; the threads of the policy, executors and trace writer (a component
    stuck in a call shows there; one that does not answer in 20 s is named)."""

    def book(manager: Any) -> str:  # defined here: pickled by value into the actor
        import io
        import sys
        import traceback

        out = io.StringIO()
        watch = manager._parked_watch
        print(f"parked {sorted(manager._runner.parked)}; resumed {manager.unparked}; watch {watch!r}"
              + (f" ended: {watch.exception()!r}" if watch and watch.done() and not watch.cancelled() else ""),
              file=out)
        for case_id, task in manager._tasks.items():
            print(f"-- task of {case_id}", file=out)
            task.print_stack(file=out)
        for ident, frame in sys._current_frames().items():
            print(f"-- thread {ident}", file=out)
            traceback.print_stack(frame, file=out)
        return out.getvalue()

    def threads(_actor: Any) -> str:
        import io
        import sys
        import traceback

        out = io.StringIO()
        for ident, frame in sys._current_frames().items():
            print(f"-- thread {ident}", file=out)
            traceback.print_stack(frame, file=out)
        return out.getvalue()

    parts = []
    for name, handle, fn in [("case manager", h["cases"], book), ("policy", h["policy"], threads),
                             ("trace writer", h["tracer"], threads),
                             *((f"executor {n}", e, threads) for n, e in enumerate(h["executors"]))]:
        try:
            parts.append(f"== {name}\n{ray.get(handle.__ray_call__.remote(fn), timeout=20)}")
        except Exception as exc:  # noqa: BLE001 - a component that does not answer is the finding
            parts.append(f"== {name}: no answer ({exc!r})")
    return "\n".join(parts)


@contextlib.contextmanager
def _unanswering(port: int) -> Iterator[None]:
    """A listener on `port` that accepts connections into its backlog and never answers: a
    database host cut off by a partition, as a client sees it (a connect waits for its timeout)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
        yield


def test_a_read_waiting_on_an_unreachable_database_holds_up_no_other_call(ray_runtime, server) -> None:
    """The case manager is an async actor: a read of its store waiting on a database that does not
    answer (a connect waits 10 s) runs in a worker thread, so a call sent after it (the health
    probe's open_cases) is answered first."""
    url = server.new_database("partition")
    cases = CaseManager.options(num_cpus=0).remote(
        "planner", "policy", ["executor"], "tracer", ToolRegistry([], {}), state=url)
    try:
        assert ray.get(cases.counts.remote(), timeout=60) == {}  # its pool holds a connection now
        server.halt("fast")
        with _unanswering(server.port):
            slow = cases.entry.remote("case-not-held")  # not in memory: read from the store
            time.sleep(2)  # it waits on the connect now (Ray may start an async actor's calls out of order)
            quick = cases.open_cases.remote()
            ready, _ = ray.wait([slow, quick], num_returns=1, timeout=60)
            assert ready == [quick] and ray.get(quick) == 0
            refused = _refusal(slow)
        assert isinstance(refused, StateUnavailable), repr(refused)
    finally:
        ray.kill(cases)
        server.start()  # stopped by its fixture
