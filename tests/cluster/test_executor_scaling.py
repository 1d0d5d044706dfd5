"""The executor pool sized with its load: the scaling decision on a fake clock, the pool over
fake actors (routing, growing, shrinking only idle actors), the configuration's validation,
and on Ray a burst of slow tool calls that grows the pool to its maximum and, once idle, back
to its minimum without losing a call or sending one twice."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray
from pydantic import ValidationError
from ray.exceptions import RayActorError

from opsagent.cli import main
from opsagent.cluster.adapters import ExecutorPool
from opsagent.cluster.config import ExecutorAutoscalingConfig, SystemConfig
from opsagent.cluster.executor_scaling import ExecutorScaler, InFlightHistory
from opsagent.errors import ConfigError

SCALING = ExecutorAutoscalingConfig(min_executors=1, max_executors=4, target_in_flight=2,
                                    upscale_delay_s=5, downscale_delay_s=10, interval_s=1)


# --- the decision, on a fake clock ----------------------------------------------------------

def _scaler(**changes) -> ExecutorScaler:
    scaler = ExecutorScaler(SCALING.model_copy(update=changes))
    scaler.record(0.0, 0)
    return scaler


def test_no_decision_before_the_window_has_history_then_the_load_within_target_keeps_the_size():
    scaler = _scaler()
    early = scaler.decide(2.0, 1)
    assert early.desired == 1 and early.reason == "not enough history yet"
    steady = scaler.decide(11.0, 1)
    assert steady.desired == 1 and steady.reason == "load within target"


def test_a_sustained_load_grows_the_pool_to_ceil_of_average_over_target_capped_at_max():
    scaler = _scaler()
    scaler.record(10.0, 7)
    grow = scaler.decide(15.0, 1)  # 7 in flight over the whole 5 s window
    assert (grow.desired, grow.average_in_flight) == (4, 7.0)  # ceil(7 / 2) = 4 = max
    assert "exceed 2 x 1" in grow.reason
    scaler.record(16.0, 20)
    assert scaler.decide(21.0, 4).desired == 4  # never above max_executors


def test_growth_follows_the_time_weighted_average_not_a_short_spike():
    scaler = _scaler()
    scaler.record(20.0, 40)
    scaler.record(20.1, 0)  # 40 calls for a tenth of a second: 0.8 on average over 5 s
    decision = scaler.decide(25.0, 1)
    assert decision.desired == 1 and decision.average_in_flight == pytest.approx(0.8)
    scaler.record(26.0, 5)
    assert scaler.decide(31.0, 1).desired == 3  # 5 for the whole window: ceil(5 / 2)


def test_one_decision_per_interval():
    scaler = _scaler(interval_s=3)
    scaler.record(10.0, 8)
    assert scaler.decide(15.0, 1).desired == 4
    assert scaler.decide(17.9, 1) is None
    assert scaler.decide(18.0, 1) is not None


def test_the_pool_shrinks_only_after_the_load_fitted_fewer_executors_for_the_whole_delay():
    scaler = _scaler()
    scaler.record(10.0, 8)
    scaler.record(20.0, 3)  # needs 2 executors from here on
    assert scaler.decide(25.0, 4).desired == 4  # 8 in flight 5 s ago: still within the 10 s delay
    late = scaler.decide(30.0, 4)  # 3 at most over [20, 30]
    assert late.desired == 2 and "at most 3 calls in flight over 10 s" in late.reason
    scaler.record(31.0, 0)
    assert scaler.decide(40.0, 2).desired == 2  # the 3 still counts at 30
    assert scaler.decide(41.0, 2).desired == 1  # idle for 10 s: down to min, not below


def test_a_call_starting_now_counts_against_shrinking():
    scaler = _scaler()
    scaler.record(30.0, 6)
    assert scaler.decide(30.0, 4).desired == 3  # 6 now: ceil(6 / 2), not min


def test_the_size_is_brought_within_min_and_max():
    scaler = _scaler(min_executors=2, max_executors=3)
    assert scaler.decide(1.0, 1).desired == 2
    assert "below min_executors (2)" in scaler.decide(2.0, 1).reason
    assert scaler.decide(3.0, 5).desired == 3


def test_zero_delays_decide_on_the_calls_in_flight_right_now():
    scaler = _scaler(upscale_delay_s=0, downscale_delay_s=0)
    scaler.record(1.0, 5)
    assert scaler.decide(1.0, 1).desired == 3
    scaler.record(2.0, 0)
    assert scaler.decide(2.0, 3).desired == 1


def test_the_history_refuses_negative_counts_and_time_going_backwards_and_forgets_old_points():
    history = InFlightHistory()
    with pytest.raises(ValueError, match="negative"):
        history.record(0.0, -1)
    history.record(5.0, 1)
    with pytest.raises(ValueError, match="backwards"):
        history.record(4.0, 1)
    assert history.average(4.0, 6.0) is None  # history begins after the window does
    history.record(7.0, 3)
    history.record(9.0, 0)
    assert history.average(5.0, 9.0) == pytest.approx(2.0)
    assert history.peak(5.0, 9.0) == 3
    history.forget_before(8.0)
    assert history.average(8.0, 10.0) == pytest.approx(1.5)  # the 3 in force at 8 was kept
    assert history.average(5.0, 9.0) is None


# --- the configuration ----------------------------------------------------------------------

def test_the_autoscaling_block_is_validated_with_clear_errors(tmp_path):
    with pytest.raises(ValidationError, match=r"min_executors \(5\) is above max_executors \(2\)"):
        SystemConfig.model_validate({"executor_autoscaling": {"min_executors": 5, "max_executors": 2}})
    for bad in ({"target_in_flight": 0}, {"interval_s": 0}, {"upscale_delay_s": -1},
                {"max_executors": 65}, {"min_executors": 0}, {"max_replicas": 3}):
        with pytest.raises(ValidationError):
            ExecutorAutoscalingConfig.model_validate(bad)
    path = tmp_path / "system.yaml"
    path.write_text("executor_autoscaling:\n  min_executors: 3\n  max_executors: 1\n")
    with pytest.raises(ConfigError, match=r"min_executors \(3\) is above max_executors \(1\)"):
        SystemConfig.from_yaml(path)


def test_a_fixed_pool_stays_the_default_and_an_autoscaled_one_starts_at_its_minimum(tmp_path):
    assert SystemConfig(executors=5).initial_executors == 5
    path = tmp_path / "system.yaml"
    path.write_text("executors: 8\nexecutor_autoscaling: {min_executors: 2, max_executors: 6}\n")
    config = SystemConfig.from_yaml(path)
    assert config.initial_executors == 2 and config.executor_autoscaling.max_executors == 6


def test_bench_load_refuses_a_bad_autoscale_range_before_anything_starts(capsys):
    for bad in ("4:1", "x", "0:3", "2:99"):
        assert main(["bench", "load", "--autoscale", bad]) == 2
        assert "--autoscale takes MIN:MAX" in capsys.readouterr().err


# --- the pool, over fake actors -------------------------------------------------------------

class _Method:
    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args):
        return self._fn(*args)


class FakeExecutor:
    """Stands for an executor actor handle: `execute` waits for `release`; `dead` raises as a
    dead actor does; `broken` fails to start."""

    def __init__(self, name: str, *, dead: bool = False, broken: bool = False) -> None:
        self.name, self.dead, self.broken = name, dead, broken
        self.calls: list[tuple] = []
        self.release = asyncio.Event()
        self.execute = _Method(self._execute)
        self.pid = _Method(self._pid)

    async def _execute(self, tool, args, case_id, step, permit, dry_run):
        if self.dead:
            raise RayActorError()
        self.calls.append((case_id, step))
        await self.release.wait()
        return f"{self.name}:{case_id}"

    async def _pid(self):
        if self.broken:
            raise RayActorError()
        return 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _pool(handles, *, broken_new: bool = False, **changes):
    made, killed, clock = [], [], Clock()

    def factory():
        made.append(FakeExecutor(f"new-{len(made)}", broken=broken_new))
        return made[-1]

    pool = ExecutorPool(handles, factory=factory, scaling=SCALING.model_copy(update=changes),
                        kill=killed.append, clock=clock, loop=False)  # the test calls rescale()
    return pool, made, killed, clock


def _call(pool, case_id):
    return asyncio.ensure_future(pool.execute("wms_get_shipment", {}, case_id=case_id, step=1))


def test_each_call_goes_to_the_executor_with_the_fewest_in_flight():
    async def scenario():
        a, b = FakeExecutor("a"), FakeExecutor("b")
        pool = ExecutorPool([a, b])
        first = [_call(pool, f"c{i}") for i in range(3)]
        await asyncio.sleep(0)
        assert sorted([len(a.calls), len(b.calls)]) == [1, 2]
        busier, other = (a, b) if len(a.calls) == 2 else (b, a)
        busier.release.set()
        while pool.status().in_flight > 1:
            await asyncio.sleep(0)
        last = _call(pool, "d")
        await asyncio.sleep(0)
        counts = len(busier.calls), len(other.calls)  # 0 vs 1 in flight: the call goes to busier
        other.release.set()
        return counts, await asyncio.gather(*first, last)

    counts, results = asyncio.run(scenario())
    assert counts == (3, 1)
    assert sorted(r.split(":")[1] for r in results) == ["c0", "c1", "c2", "d"]


def test_a_call_to_a_dead_executor_goes_to_a_live_one_once():
    async def scenario():
        dead, live = FakeExecutor("dead", dead=True), FakeExecutor("live")
        live.release.set()
        pool = ExecutorPool([dead, live])
        return [await pool.execute("t", {}, case_id=f"c{i}", step=1) for i in range(3)], live

    results, live = asyncio.run(scenario())
    assert results == ["live:c0", "live:c1", "live:c2"] and len(live.calls) == 3


def test_the_pool_grows_to_max_under_load_and_shrinks_by_idle_added_actors_only():
    async def scenario():
        floor = FakeExecutor("floor")
        pool, made, killed, clock = _pool([floor])
        calls = [_call(pool, f"c{i}") for i in range(9)]
        await asyncio.sleep(0)
        assert pool.status().in_flight == 9 and len(floor.calls) == 9
        clock.now = 6.0
        grown = await pool.rescale()
        assert (grown.from_size, grown.to_size, grown.desired) == (1, 4, 4) and len(made) == 3
        assert "exceed 2 x 1" in grown.reason
        later = [_call(pool, f"d{i}") for i in range(3)]
        await asyncio.sleep(0)
        assert [len(m.calls) for m in made] == [1, 1, 1]  # new calls go to the idle new actors
        floor.release.set()
        made[0].release.set()
        while pool.status().in_flight > 2:
            await asyncio.sleep(0)
        clock.now = 30.0  # nothing but two calls in flight for 10 s: one executor would do
        shrunk = await pool.rescale()
        # made[1] and made[2] are mid-call: only the idle added one goes; the floor stays
        assert (shrunk.from_size, shrunk.to_size, shrunk.desired) == (4, 3, 1)
        assert killed == [made[0]] and "2 busy or started by the system, kept" in shrunk.reason
        for m in made:
            m.release.set()
        await asyncio.gather(*calls, *later)  # every call of the burst answered
        clock.now = 45.0
        await pool.rescale()
        status = pool.status()
        return pool, made, killed, floor, status

    pool, made, killed, floor, status = asyncio.run(scenario())
    assert killed == [made[0], made[2], made[1]] and pool.handles == [floor]
    assert (status.size, status.in_flight, status.min_executors, status.max_executors) == (1, 0, 1, 4)
    assert status.autoscaling
    assert [(e.from_size, e.to_size) for e in status.decisions] == [(1, 4), (4, 3), (3, 1)]


def test_a_new_executor_that_does_not_start_is_dropped_and_killed():
    async def scenario():
        pool, made, killed, clock = _pool([FakeExecutor("floor")], broken_new=True)
        calls = [_call(pool, f"c{i}") for i in range(5)]
        await asyncio.sleep(0)
        clock.now = 6.0
        event = await pool.rescale()
        for call in calls:
            call.cancel()
        return event, made, killed, pool

    event, made, killed, pool = asyncio.run(scenario())
    assert (event.from_size, event.to_size, event.desired) == (1, 1, 3)
    assert "2 of 2 new executors did not start" in event.reason
    assert killed == made and len(pool.handles) == 1


def test_a_fixed_pool_never_rescales_and_a_pool_needs_actors_and_a_factory_to_scale():
    pool = ExecutorPool([FakeExecutor("a"), FakeExecutor("b")])
    assert asyncio.run(pool.rescale()) is None
    status = pool.status()
    assert (status.size, status.min_executors, status.max_executors, status.autoscaling) == (2, 2, 2, False)
    with pytest.raises(ValueError, match="at least one actor"):
        ExecutorPool([])
    with pytest.raises(ValueError, match="needs a factory"):
        ExecutorPool([FakeExecutor("a")], scaling=SCALING)


# --- on Ray: a burst of slow tool calls -----------------------------------------------------

@pytest.fixture(scope="module")
def burst(ray_runtime, platform, tmp_path_factory):
    from opsagent.agents.case import ExceptionReport
    from opsagent.agents.playbooks.model import builtin_playbooks
    from opsagent.cluster.system import OpsAgentSystem
    from opsagent.evals.bench.soak import GoldScriptedEngine, policy_with_rate
    from opsagent.tools.platform import inject_weight_mismatch
    from tests.fakes.autonomy import credential
    from tests.fakes.slow_proxy import slow_platform

    instances = inject_weight_mismatch(platform, count=24, seed=8801, suspect_share=0.0)
    root = tmp_path_factory.mktemp("scaling")
    scaling = ExecutorAutoscalingConfig(min_executors=1, max_executors=3, target_in_flight=2,
                                        upscale_delay_s=0.5, downscale_delay_s=2.0, interval_s=0.25)
    with slow_platform(platform, delay_s=1.5) as proxy:
        config = SystemConfig(traces_dir=root / "traces", state_dir=root / "state",
                              executor_autoscaling=scaling)
        system = OpsAgentSystem(config, proxy.registry(), engine=GoldScriptedEngine(),
                                playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]},
                                policy=policy_with_rate(100_000)).start()
        try:
            h = system.handles
            ray.get(h["policy"].set_mode.remote("weight_mismatch", "autonomous", credential(system.tokens_path), "test: burst"))
            ids = {}
            for inst in instances:
                report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                         entities=inst.entities)
                ids[ray.get(h["cases"].submit.remote(report, "burst", inst.entities["shipment_id"])).entry
                    .case.case_id] = inst
            at_max = _wait_for(lambda: ray.get(h["cases"].executor_pool.remote()).size == 3,
                               "the pool to reach max_executors")
            grown = ray.get(h["cases"].executor_handles.remote())
            cases = _wait_for(lambda: _all_final(h["cases"], ids), "every case to be final")
            _wait_for(lambda: ray.get(h["cases"].executor_pool.remote()).size == 1,
                      "the idle pool to shrink to min_executors")
            yield dict(system=system, ids=ids, cases=cases, grown=grown, at_max=at_max, proxy=proxy,
                       pool=ray.get(h["cases"].executor_pool.remote()),
                       now=ray.get(h["cases"].executor_handles.remote()))
        finally:
            system.stop()


def _wait_for(check, what: str, timeout_s: float = 180.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _all_final(cases_actor, ids):
    cases = {c.case_id: c for c in ray.get(cases_actor.list.remote()) if c.case_id in ids}
    return cases if len(cases) == len(ids) and all(c.status.final for c in cases.values()) else None


@pytest.mark.ray
def test_a_burst_grows_the_pool_to_max_and_the_idle_pool_shrinks_back_to_min(burst):
    pool = burst["pool"]
    assert (pool.size, pool.min_executors, pool.max_executors, pool.in_flight) == (1, 1, 3, 0)
    assert len(burst["grown"]) == 3
    sizes = [(e.from_size, e.to_size) for e in pool.decisions]
    first_max = next((i for i, (_, to) in enumerate(sizes) if to == 3), None)
    assert first_max is not None and sizes[-1][1] == 1, pool.decisions
    assert all(to > was for was, to in sizes[:first_max + 1])  # grew to max
    assert all(to < was for was, to in sizes[first_max + 1:]), pool.decisions  # then only shrank
    # the system's own executor is the floor and still serves; the added ones were killed for good
    floor = burst["system"].handles["executors"]
    assert len(floor) == 1 and len(burst["now"]) == 1
    assert ray.get(burst["now"][0].pid.remote()) == ray.get(floor[0].pid.remote())
    floor_pid = ray.get(floor[0].pid.remote())
    removed = [h for h in burst["grown"] if _pid_or_none(h) != floor_pid]
    assert len(removed) == 2


def _pid_or_none(handle):
    try:
        return ray.get(handle.pid.remote(), timeout=30)
    except RayActorError:
        return None


@pytest.mark.ray
def test_no_call_of_the_burst_was_lost_or_sent_twice(burst, platform):
    cases = burst["cases"]
    assert {c.status.value for c in cases.values()} == {"resolved"}, {
        cid: (c.status.value, c.reason) for cid, c in cases.items() if c.status.value != "resolved"}
    calls = burst["proxy"].calls
    twice = {k: n for k, n in calls.items() if n > 1}
    assert not twice
    disputes = [k for k in calls if k[0] == "POST" and k[2] is not None]
    assert len(disputes) == len(cases)  # one write per case, each with its own idempotency key
    by_shipment: dict[str, int] = {}
    for row in platform.snapshot("tms")["weight_disputes"]:
        by_shipment[row["shipment_id"]] = by_shipment.get(row["shipment_id"], 0) + 1
    assert all(by_shipment.get(inst.entities["shipment_id"]) == 1 for inst in burst["ids"].values())
