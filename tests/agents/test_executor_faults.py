"""A system of record that times out, answers 500 or malformed JSON: the executor sends the call
again within its limit (reads freely, writes with their idempotency key), then the case escalates
with the cause in the failed step; nothing is applied twice or half.

The faults come from a small proxy in front of the sandbox carrier (TMS): each rule fails the next
matching requests in one way, before or after the real system handled them.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

from opsagent.agents.case import CaseStatus
from opsagent.evals.gold import gold_step
from opsagent.tools.platform import inject_weight_mismatch
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.sources import OpenAPISource

_SEEDS = itertools.count(71_000)
SLOW_S = 4.0  # a hung answer; the executor's timeout in these tests is 2 s (a loaded machine is slow)


@dataclass
class Fault:
    """Fail the next `times` requests whose method is `method` and path contains `path`."""

    method: str
    path: str
    kind: str  # timeout | 500 | malformed, each optionally "+applied" (the real system ran first)
    times: int = 100
    seen: int = 0


@dataclass
class Proxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)  # forwards the carrier's

        @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        async def forward(path: str, request: Request) -> Response:
            self.requests.append((request.method, "/" + path))
            fault = next((f for f in self.faults if f.method == request.method and f.path in path
                          and f.seen < f.times), None)
            kind = None
            if fault is not None:
                fault.seen += 1
                kind, _, when = fault.kind.partition("+")
                if not when:  # fails before the system saw the request
                    return await _fail(kind)
            headers = {k: v for k, v in request.headers.items() if k.lower() in
                       ("content-type", "idempotency-key", "authorization")}
            async with httpx.AsyncClient() as client:
                upstream = await client.request(request.method, f"{self.upstream}/{path}",
                                                params=request.query_params, content=await request.body(),
                                                headers=headers, timeout=10)
            if kind is not None:  # the system applied it; the answer is lost
                return await _fail(kind)
            return Response(upstream.content, upstream.status_code,
                            media_type=upstream.headers.get("content-type"))

        return app


async def _fail(kind: str) -> Response:
    if kind == "timeout":
        await asyncio.sleep(SLOW_S)
        return Response("{}", 200, media_type="application/json")
    if kind == "500":
        return Response('{"detail": "internal error"}', 500, media_type="application/json")
    if kind == "malformed":
        return Response('{"dispute_id": "WD-', 200, media_type="application/json")
    raise AssertionError(kind)


@contextmanager
def _serve(app: FastAPI) -> Iterator[str]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the proxy did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


@pytest.fixture(scope="module")
def proxy(platform) -> Iterator[tuple[Proxy, ToolRegistry]]:
    faulty = Proxy(platform.base_urls["tms"])
    with _serve(faulty.app()) as url:
        tools = ToolRegistry.from_services({**platform.base_urls, "tms": url})
        others = {k: v for k, v in platform.base_urls.items() if k != "tms"}
        carrier = OpenAPISource(name="tms", base_url=url, retries=2, backoff_s=0.05)
        yield faulty, ToolRegistry(tools.specs(), others, sources=[carrier])


@pytest.fixture
def run_case(proxy, harness, platform):
    """Run one fresh weight mismatch through the gold planner with `faults` on the carrier; returns
    the case, the shipment and the carrier requests made for it."""
    faulty, registry = proxy

    def run(*faults: Fault, calls: int = 3):
        """`calls`: the model calls the case takes (2 reads and the dispute; 4 when the dispute
        fails for good and the planner then finishes the case)."""
        inst = inject_weight_mismatch(platform, count=1, seed=next(_SEEDS), suspect_share=0.0)[0]
        faulty.faults, faulty.requests = list(faults), []
        h = harness([gold_step] * calls, registry=registry)
        h.runner.executor.timeout = 2.0
        case = h.run(inst)
        return case, inst.entities["shipment_id"], list(faulty.requests)

    yield run
    faulty.faults = []


def _disputes(platform, sid):
    return [r for r in platform.snapshot("tms")["weight_disputes"] if r["shipment_id"] == sid]


def _ledger(platform, case):
    rows = platform.snapshot("tms").get("idempotency_keys")
    assert rows is not None, "the carrier snapshot shows its idempotency ledger"
    return [r for r in rows if r["key"].startswith(f"{case.case_id}:")]


def _sent(requests, method, word):
    return sum(1 for m, p in requests if m == method and word in p)


@pytest.mark.parametrize("kind", ["timeout", "500", "malformed"])
def test_a_read_that_keeps_failing_is_retried_then_the_case_escalates_with_the_cause(run_case, platform, kind):
    case, sid, requests = run_case(Fault("GET", "shipments/", kind))
    assert case.status == CaseStatus.escalated and "could not be read" in case.reason
    failed = case.steps[-1]
    assert failed.tool == "tms_get_shipment" and failed.executed and failed.ok is False
    cause = {"timeout": "timed out", "500": "HTTP 500", "malformed": "malformed JSON"}[kind]
    assert cause in failed.error
    assert _sent(requests, "GET", "shipments/") == 3  # one call and the source's 2 retries, no more
    assert _disputes(platform, sid) == [] and _ledger(platform, case) == []


def test_a_read_that_recovers_within_the_limit_is_not_a_failure(run_case, platform):
    case, sid, requests = run_case(Fault("GET", "shipments/", "500", times=2))
    assert case.status == CaseStatus.resolved, case.reason
    assert _sent(requests, "GET", "shipments/") == 3
    assert len(_disputes(platform, sid)) == 1


@pytest.mark.parametrize("kind", ["500", "malformed", "timeout"])
def test_a_write_whose_answer_was_lost_is_resent_with_its_key_and_applied_once(run_case, platform, kind):
    case, sid, requests = run_case(Fault("POST", "weight-disputes", f"{kind}+applied", times=1))
    assert case.status == CaseStatus.resolved, case.reason
    assert _sent(requests, "POST", "weight-disputes") == 2
    disputes = _disputes(platform, sid)
    assert len(disputes) == 1 and case.steps[-1].result["dispute_id"] == disputes[0]["dispute_id"]
    assert len(_ledger(platform, case)) == 1


def test_a_write_refused_every_time_escalates_and_applies_nothing(run_case, platform):
    case, sid, requests = run_case(Fault("POST", "weight-disputes", "500"), calls=4)
    assert case.status == CaseStatus.escalated and "could not be carried out: HTTP 500" in case.reason
    failed = case.steps[-1]
    assert failed.tool == "tms_open_weight_dispute" and "HTTP 500" in failed.error
    assert _sent(requests, "POST", "weight-disputes") == 3
    assert _disputes(platform, sid) == [] and _ledger(platform, case) == []


def test_a_write_applied_but_never_answered_escalates_and_is_applied_exactly_once(run_case, platform):
    case, sid, requests = run_case(Fault("POST", "weight-disputes", "timeout+applied"), calls=4)
    assert case.status == CaseStatus.escalated and "timed out" in case.steps[-1].error
    assert _sent(requests, "POST", "weight-disputes") == 3
    disputes = _disputes(platform, sid)  # applied whole, once: the human finds it in place
    assert len(disputes) == 1 and len(_ledger(platform, case)) == 1
    shipment = httpx.get(f"{platform.base_urls['tms']}/shipments/{sid}").json()
    assert shipment["open_dispute_id"] == disputes[0]["dispute_id"]
