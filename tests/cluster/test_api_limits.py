"""The API's limits, in process: per-caller rate limit (429 with Retry-After), and a full case
manager answering 503 with Retry-After instead of dropping the submission."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from opsagent.agents.engines import ScriptedEngine
from opsagent.agents.engines.base import GenerationRequest, GenerationResult, PlannerEngine
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.cluster.api.request_limits import ApiLimits
from opsagent.tools.platform import inject_weight_mismatch
from tests.fakes.local_actors import local_front_door

ESCALATE = {"evidence": {"scale_check": "unknown"}, "tool": "finish", "status": "escalated",
            "reason": "released by the test"}


class GatedEngine(PlannerEngine):
    """Holds every generation until the test opens the gate, then answers from a script."""

    model = "gated"

    def __init__(self, inner: PlannerEngine) -> None:
        self.inner = inner
        self.gate = asyncio.Event()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        await self.gate.wait()
        return await self.inner.generate(request)


def _playbooks():
    return {"weight_mismatch": builtin_playbooks()["weight_mismatch"]}


def _report(inst):
    return {"exception_type": inst.exception_type, "description": inst.description,
            "entities": inst.entities}


def test_a_full_case_manager_answers_503_and_the_retry_gets_in(platform, tmp_path):
    first, second = inject_weight_mismatch(platform, count=2, seed=7201, suspect_share=0.0)
    engine = GatedEngine(ScriptedEngine([ESCALATE] * 2))  # one call per case
    with local_front_door(platform.registry(), tmp_path, engine=engine, playbooks=_playbooks(),
                          max_open_cases=1, modes={"weight_mismatch": "autonomous"}) as door, \
            httpx.Client(base_url=door.url, headers=door.headers("submitter"), timeout=30) as client:
        running = client.post("/v1/exceptions", json=_report(first))
        assert running.status_code == 202
        refused = client.post("/v1/exceptions", json=_report(second), headers={"Idempotency-Key": "k-2"})
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "open cases" in refused.json()["error"]
        assert client.get("/v1/cases").json()["total"] == 1  # nothing half-made
        door.server.call_soon(engine.gate.set)
        deadline = time.monotonic() + 30
        while client.get("/v1/health").json()["open_cases"] and time.monotonic() < deadline:
            time.sleep(0.05)
        retried = client.post("/v1/exceptions", json=_report(second), headers={"Idempotency-Key": "k-2"})
        assert retried.status_code == 202 and retried.json()["created"] is True


@pytest.fixture(scope="module")
def limited(platform, tmp_path_factory):
    limits = ApiLimits(requests_per_window=5, window_s=3600)
    with local_front_door(platform.registry(), tmp_path_factory.mktemp("limited"),
                          engine=ScriptedEngine([]), playbooks=_playbooks(), limits=limits) as door:
        yield door


def test_each_caller_is_rate_limited_on_its_own(limited):
    with httpx.Client(base_url=limited.url, headers=limited.headers("auditor")) as auditor:
        assert [auditor.get("/v1/cases").status_code for _ in range(5)] == [200] * 5
        limited_answer = auditor.get("/v1/cases")
        assert limited_answer.status_code == 429
        assert int(limited_answer.headers["retry-after"]) >= 1
        assert "limit of 5" in limited_answer.json()["error"]
    with httpx.Client(base_url=limited.url, headers=limited.headers("approver")) as approver:
        assert approver.get("/v1/approvals").status_code == 200  # another caller, its own budget


def test_guessing_tokens_is_rate_limited_too(limited):
    with httpx.Client(base_url=limited.url, headers={"Authorization": "Bearer oat_guess"}) as guesser:
        answers = [guesser.get("/v1/cases").status_code for _ in range(6)]
    assert answers == [401] * 5 + [429]
