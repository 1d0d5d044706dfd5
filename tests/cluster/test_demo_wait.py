"""The demo's submit-and-wait loop against the real API (in process, real rate limiter): 20 slow
cases are followed with one list request per interval, and a burst of 429s is waited out."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from opsagent.agents.engines import ScriptedEngine
from opsagent.agents.engines.base import GenerationRequest, GenerationResult, PlannerEngine
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.cluster.api.request_limits import ApiLimits
from opsagent.cluster.client import OpsAgentClient
from opsagent.cluster.demo import WAITING, submit_all, wait_all
from opsagent.errors import ApiBusy
from opsagent.evals.gold import gold_step
from opsagent.tools.platform import inject_weight_mismatch
from tests.fakes.local_actors import local_front_door


class SlowEngine(PlannerEngine):
    """Gold steps, each after `delay_s`: cases that take seconds, like the real planner's."""

    model = "slow-scripted"

    def __init__(self, delay_s: float, calls: int) -> None:
        self.inner = ScriptedEngine([gold_step] * calls)
        self.delay_s = delay_s

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        await asyncio.sleep(self.delay_s)
        return await self.inner.generate(request)


def _door(platform, root, calls, limits=None, delay_s=0.5):
    """`calls`: the model calls the test's cases take (3 per gold weight mismatch)."""
    return local_front_door(platform.registry(), root, engine=SlowEngine(delay_s, calls),
                            playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]},
                            limits=limits, modes={"weight_mismatch": "autonomous"})


def _list_answers(door, since: str) -> list[int]:
    lines = (door.state / "access.jsonl").read_text().splitlines()
    return [r["status"] for r in map(json.loads, lines) if r["path"] == "/v1/cases" and r["at"] >= since]


def test_the_demo_follows_20_slow_cases_with_one_request_per_interval(platform, tmp_path):
    instances = inject_weight_mismatch(platform.base_urls, count=20, seed=7501, suspect_share=0.2)
    with _door(platform, tmp_path, 60, limits=ApiLimits()) as door, \
            OpsAgentClient(door.url, door.tokens["submitter"]) as client:  # the real limit: 600 a minute
        submitted = submit_all(client, instances)
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
        polls: list[dict[str, str]] = []
        t0 = time.monotonic()
        views = wait_all(client, list(submitted), timeout_s=120, interval_s=0.5, on_poll=polls.append)
        took = time.monotonic() - t0
        answers = _list_answers(door, since)
    assert len(views) == 20 and not [v for v in views.values() if v["status"] in WAITING]
    assert {views[cid]["status"] for cid in submitted} <= {"resolved", "escalated"}
    assert all(views[cid]["status"] == inst.expected_status for cid, inst in submitted.items())
    assert took > 1.5  # the cases really were slow: several polls were needed
    assert len(polls) >= 3 and sum(s not in WAITING for s in polls[-1].values()) == 20
    assert set(answers) == {200} and len(answers) == len(polls)  # one request per poll, never a 429
    assert len(answers) <= took / 0.5 + 2


def test_a_burst_of_429s_is_waited_out(platform, tmp_path):
    instances = inject_weight_mismatch(platform.base_urls, count=5, seed=7502, suspect_share=0.0)
    tight = ApiLimits(requests_per_window=3, window_s=2)  # far below the polling rate asked for
    with _door(platform, tmp_path, 3 * 5, limits=tight, delay_s=0.6) as door, \
            OpsAgentClient(door.url, door.tokens["submitter"]) as submitter, \
            OpsAgentClient(door.url, door.tokens["auditor"]) as follower:
        submitted = submit_all(submitter, instances)
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
        views = wait_all(follower, list(submitted), timeout_s=120, interval_s=0.05)
        answers = _list_answers(door, since)
    assert all(views[cid]["status"] == "resolved" for cid in submitted)
    assert 429 in answers and answers[-1] == 200  # limited on the way, and still finished


def test_the_client_waits_retry_after_while_the_deadline_allows(monkeypatch):
    from opsagent.cluster import client as client_module

    answers: list[int] = []
    waits: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status = answers.pop(0)
        if status == 429:
            return httpx.Response(429, json={"error": "requests by x: 601 reached 600"},
                                  headers={"Retry-After": "25"})
        return httpx.Response(200, json={"items": [], "total": 0, "offset": 0, "limit": 50,
                                         "next_offset": None})

    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    with OpsAgentClient("http://opsagent.test", "oat_x") as api:
        api._http = httpx.Client(base_url="http://opsagent.test", transport=httpx.MockTransport(handler))
        answers[:] = [429] * 6 + [200]  # more than RETRIES, each longer than MAX_WAIT_S
        assert api.cases(deadline=time.monotonic() + 3600)["total"] == 0
        assert waits == [25.0] * 6  # the whole Retry-After, every time
        answers[:], waits[:] = [429], []
        with pytest.raises(ApiBusy) as caught:  # the wait asked for does not fit the deadline
            api.cases(deadline=time.monotonic() + 10)
        assert caught.value.retry_after_s == 25.0 and waits == []
        answers[:] = [429] * 4
        with pytest.raises(ApiBusy, match="429"):  # without a deadline: RETRIES, then an error
            api.cases()
        assert waits == [client_module.MAX_WAIT_S] * client_module.RETRIES


def test_wait_all_ends_at_its_deadline_when_the_api_asks_for_longer(monkeypatch):
    class Busy:
        def cases(self, **kwargs):
            raise ApiBusy("GET /v1/cases: 429 slow down", 30.0)

    assert wait_all(Busy(), ["case-1"], timeout_s=5) == {}

