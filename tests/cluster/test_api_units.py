"""The front door's parts on their own: the rate limiter, the case book (idempotency, cancelling
a running case at a step boundary, pages), the console's diff rows and its CSRF check."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from opsagent.agents.case import ExceptionReport
from opsagent.agents.planner import PlannerTurn
from opsagent.agents.step_schema import PlannedStep
from opsagent.cluster.api.request_limits import RateLimiter
from opsagent.cluster.case_book import CaseBook
from opsagent.cluster.case_query import CaseQuery, ReadScope
from opsagent.cluster.console.render import diff_rows
from opsagent.errors import CaseStateError, IdempotencyConflict, OverloadedError, RateLimited
from opsagent.tools.registry import ToolRegistry
from tests.fakes.book_ports import DenyingPolicy, ListTracer


def test_the_rate_limit_slides_with_its_window():
    now = [100.0]
    limiter = RateLimiter(3, 10.0, clock=lambda: now[0])
    for _ in range(3):
        limiter.hit("alice")
    with pytest.raises(RateLimited) as refused:
        limiter.hit("alice")
    assert refused.value.limit == 3 and refused.value.retry_after_s == pytest.approx(10.0)
    limiter.hit("bob")  # another caller, another budget
    now[0] += 4
    with pytest.raises(RateLimited) as again:
        limiter.hit("alice")
    assert again.value.retry_after_s == pytest.approx(6.0)
    now[0] += 6
    limiter.hit("alice")  # the oldest hits left the window
    with pytest.raises(ValueError):
        RateLimiter(0, 1.0)


def test_diff_rows_put_changes_first_and_leave_other_shapes_alone():
    preview = {"dry_run": True, "diff": {"before": {"a": 1, "b": 2, "gone": 0},
                                         "after": {"a": 1, "b": 3, "new": "x"}}}
    rows = diff_rows(preview)
    assert [(r["field"], r["changed"]) for r in rows] == [
        ("b", True), ("gone", True), ("new", True), ("a", False)]
    assert diff_rows({"dry_run": True, "diff": {"before": None, "after": {"id": 1}}})[0]["changed"]
    assert diff_rows({"something": "else"}) is None and diff_rows(None) is None
    assert diff_rows({"diff": {"before": [1], "after": [2]}}) is None


class _Planner:
    """Proposes a tool (refused by the policy) on every turn; the first turn waits for `go`."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.calls = 0

    async def plan(self, case, allowed_tools):
        self.calls += 1
        await self.go.wait()
        return PlannerTurn(step=PlannedStep(tool="probe", args={"n": self.calls}))


def _book(planner, *, max_open_cases=10):
    return CaseBook(planner, DenyingPolicy(), executor=None, tracer=ListTracer(), registry=ToolRegistry([], {}),
                    max_steps=6, max_open_cases=max_open_cases)


REPORT = ExceptionReport(exception_type="weight_mismatch", description="billed too much",
                         entities={"shipment_id": "SHP-1"})


def test_a_running_case_is_cancelled_at_its_next_planning_turn():
    async def scenario():
        planner = _Planner()
        book = _book(planner)
        entry = (await book.submit(REPORT, "alice")).entry
        while planner.calls == 0:  # until the case waits in its first planning turn
            await asyncio.sleep(0)
        cancelled = await book.cancel(entry.case.case_id, "alice", "duplicate of another case")
        assert cancelled.cancel_requested_by == "alice" and not cancelled.case.status.final
        planner.go.set()
        assert await book.drain(5) == 0
        case = book.get(entry.case.case_id)
        assert case.status == "escalated"
        assert case.reason == "cancelled by alice: duplicate of another case"
        assert planner.calls == 1 and len(case.steps) == 1  # the step in flight finished, no more
        with pytest.raises(CaseStateError):
            await book.cancel(entry.case.case_id, "alice")
        statuses = [e.status for e in book._tracer.events if hasattr(e, "status")]
        assert statuses[-1] == "escalated"

    asyncio.run(scenario())


def test_idempotency_keys_are_per_submitter_and_bind_the_report():
    async def scenario():
        planner = _Planner()
        planner.go.set()
        book = _book(planner, max_open_cases=2)
        first = await book.submit(REPORT, "alice", "k1")
        again = await book.submit(REPORT, "alice", "k1")
        assert first.created and not again.created and again.entry.case.case_id == first.entry.case.case_id
        with pytest.raises(IdempotencyConflict):
            await book.submit(REPORT.model_copy(update={"description": "other"}), "alice", "k1")
        other = await book.submit(REPORT, "bob", "k1")
        assert other.created and other.entry.case.case_id != first.entry.case.case_id
        with pytest.raises(OverloadedError):  # two running: the third is refused, not queued
            await book.submit(REPORT, "carol")
        assert (await book.submit(REPORT, "alice", "k1")).created is False  # a retry still answers
        await book.drain(5)
        page = book.page(CaseQuery(limit=1, readable_by=ReadScope(submitter="alice")))
        assert page.total == 1 and page.items[0].submitted_by == "alice"
        assert book.page(CaseQuery(readable_by=ReadScope(approvals=True))).total == 0
        assert book.page(CaseQuery(status="escalated")).total == 2

    asyncio.run(scenario())


def test_console_forms_need_the_session_check(front_door):
    cookies = {"opsagent_console": front_door.tokens["approver"]}
    with httpx.Client(base_url=front_door.url, cookies=cookies, follow_redirects=False) as client:
        r = client.post("/console/approvals/apr-x/decide", data={"decision": "approve", "args_digest": "0" * 64})
        assert r.status_code == 403 and "session check failed" in r.text
        r = client.post("/console/approvals/apr-x/decide",
                        data={"decision": "approve", "args_digest": "0" * 64, "csrf": "forged"})
        assert r.status_code == 403
        page = client.get("/console/approvals")
        assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
    with httpx.Client(base_url=front_door.url, follow_redirects=False) as anonymous:
        r = anonymous.get("/console/overview")
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")


def test_the_client_retries_a_full_queue_only_when_repeating_is_safe(monkeypatch):
    from opsagent.cluster import client as client_module
    from opsagent.errors import OpsAgentError

    answers, seen, waits = [], [], []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("idempotency-key"))
        status = answers.pop(0)
        body = {"case_id": "case-1", "status": "received", "created": True, "links": {}} if status == 202 \
            else {"error": "open cases: 1 reached the limit of 1"}
        return httpx.Response(status, json=body, headers={"Retry-After": "2"} if status == 503 else {})

    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    with client_module.OpsAgentClient("http://opsagent.test", "oat_x") as api:
        api._http = httpx.Client(base_url="http://opsagent.test", transport=httpx.MockTransport(handler))
        answers[:] = [503, 503, 202]
        assert api.submit("weight_mismatch", "x", {"shipment_id": "S-1"}, idempotency_key="k")["case_id"] == "case-1"
        assert seen == ["k", "k", "k"] and waits == [2.0, 2.0]
        answers[:], seen[:] = [503], []
        with pytest.raises(OpsAgentError, match="503"):  # no key: a retry could make a second case
            api.submit("weight_mismatch", "x", {"shipment_id": "S-1"})
        assert seen == [None]


def test_the_client_sends_a_decision_again_after_a_503_and_reports_a_conflict(monkeypatch):
    """A decision is idempotent for its approver (policy/approvals.py), so the client retries it
    on 503; a 409 (decided otherwise) is an ApprovalError, not retried."""
    from opsagent.cluster import client as client_module
    from opsagent.errors import ApprovalError

    answers, seen, waits = [], [], []
    decided = {"approval_id": "apr-1", "status": "approved", "approver": "alice"}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.content))
        status = answers.pop(0)
        body = decided if status == 200 else {"error": "apr-1 is already rejected"}
        return httpx.Response(status, json=body, headers={"Retry-After": "1"} if status == 503 else {})

    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    with client_module.OpsAgentClient("http://opsagent.test", "oat_x") as api:
        api._http = httpx.Client(base_url="http://opsagent.test", transport=httpx.MockTransport(handler))
        answers[:] = [503, 200]
        assert api.decide("apr-1", approve=True, args_digest="d" * 64) == decided
        assert len(seen) == 2 and seen[0] == seen[1] and waits == [1.0]  # the same request again
        answers[:] = [409]
        with pytest.raises(ApprovalError, match="already rejected"):
            api.decide("apr-1", approve=True, args_digest="d" * 64)
        assert len(seen) == 3
