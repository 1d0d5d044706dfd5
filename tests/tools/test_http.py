import asyncio
import socket

import httpx
import pytest

from opsagent.errors import ToolError
from opsagent.tools.http import call_tool


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_read_happy_path(call, fresh):
    sid = fresh.entities["shipment_id"]
    result = call("wms_get_shipment", {"shipment_id": sid})
    assert result.ok and result.status_code == 200 and result.error is None
    assert result.body["shipment_id"] == sid and result.body["scale_check"] == "passed"
    assert result.started_at.tzinfo is not None and result.finished_at >= result.started_at
    assert result.duration_ms >= 0 and result.dry_run is False


def test_unknown_id_is_a_404_result(call):
    result = call("tms_get_shipment", {"shipment_id": "SHP-000000"})
    assert not result.ok and result.status_code == 404
    assert "SHP-000000" in result.error and "not found" in result.error


def test_path_params_are_url_quoted(call):
    result = call("tms_get_shipment", {"shipment_id": "SHP 1?x=#y"})
    assert result.status_code == 404 and "SHP 1?x=#y" in result.body["detail"]


def test_transport_failure_is_a_result_not_an_exception(registry):
    spec = registry.get("tms_get_shipment")

    async def go():
        async with httpx.AsyncClient() as client:
            url = f"http://127.0.0.1:{_closed_port()}"
            return await call_tool(client, spec, url, {"shipment_id": "SHP-1"})

    result = asyncio.run(go())
    assert not result.ok and result.status_code is None and result.body is None
    assert result.error and "Connect" in result.error


def test_programming_errors_raise(call):
    with pytest.raises(ToolError, match="missing path parameter"):
        call("tms_get_shipment", {})
    with pytest.raises(ToolError, match="unknown argument"):
        call("tms_get_shipment", {"shipment_id": "SHP-1", "verbose": True})
    with pytest.raises(ToolError, match="dry run"):
        call("tms_get_shipment", {"shipment_id": "SHP-1"}, dry_run=True)


def test_validation_error_is_summarised(call, fresh):
    args = {"shipment_id": fresh.entities["shipment_id"], "claimed_weight_kg": -2, "reason": ""}
    result = call("tms_open_weight_dispute", args)
    assert result.status_code == 422
    assert "claimed_weight_kg" in result.error and "reason" in result.error


def test_dry_run_changes_nothing(call, fresh, platform):
    sid = fresh.entities["shipment_id"]
    before = platform.digest("tms")
    args = {"shipment_id": sid, "claimed_weight_kg": fresh.facts["scanned_weight_kg"], "reason": "scan lower"}
    result = call("tms_open_weight_dispute", args, dry_run=True, idempotency_key="dry-1")
    assert result.ok and result.dry_run and result.body["dry_run"] is True
    diff = result.body["diff"]
    assert diff["before"]["shipment"]["open_dispute_id"] is None
    assert diff["after"]["shipment"]["open_dispute_id"] == diff["after"]["dispute"]["dispute_id"]
    assert call("tms_get_shipment", {"shipment_id": sid}).body["open_dispute_id"] is None
    assert platform.digest("tms") == before
    # the dry run did not consume the idempotency key either
    assert call("tms_open_weight_dispute", args, idempotency_key="dry-1").status_code == 201


def test_idempotency_replay_makes_one_dispute(call, fresh, platform):
    sid = fresh.entities["shipment_id"]
    args = {"shipment_id": sid, "claimed_weight_kg": fresh.facts["scanned_weight_kg"], "reason": "scan lower"}
    first = call("tms_open_weight_dispute", args, idempotency_key=f"key-{sid}")
    second = call("tms_open_weight_dispute", args, idempotency_key=f"key-{sid}")
    assert first.status_code == second.status_code == 201
    assert first.body == second.body
    disputes = [d for d in platform.snapshot("tms")["weight_disputes"] if d["shipment_id"] == sid]
    assert len(disputes) == 1
    # without a key, a second open is refused because one is already open
    third = call("tms_open_weight_dispute", args)
    assert third.status_code == 409 and first.body["dispute_id"] in third.error


def test_same_key_different_body_is_rejected(call, fresh):
    sid = fresh.entities["shipment_id"]
    args = {"shipment_id": sid, "claimed_weight_kg": fresh.facts["scanned_weight_kg"], "reason": "scan lower"}
    assert call("tms_open_weight_dispute", args, idempotency_key=f"k2-{sid}").ok
    other = call("tms_open_weight_dispute", {**args, "reason": "other"}, idempotency_key=f"k2-{sid}")
    assert not other.ok and other.status_code == 422 and "already used" in other.error


def _dropping(drops: int, error: type[httpx.HTTPError]):
    """A transport whose first `drops` requests die on a closed connection, then answers 200."""
    sent = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if len(sent) <= drops:
            raise error("connection closed by the server", request=request)
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handle), sent


@pytest.mark.parametrize("error", [httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError])
def test_stale_pooled_connections_are_retried_at_once_without_using_the_retries(registry, error):
    spec = registry.get("tms_open_weight_dispute")
    transport, sent = _dropping(4, error)

    async def go(**kw):
        async with httpx.AsyncClient(transport=transport) as client:
            return await call_tool(client, spec, "http://carrier", {"shipment_id": "SHP-1", "claimed_weight_kg": 1.0,
                                                                     "reason": "r"}, backoff_s=0, **kw)

    # a write with its idempotency key: four stale connections, then the answer, with no retries left
    result = asyncio.run(go(idempotency_key="c:3", retries=0))
    assert result.ok and result.attempts == 1 and len(sent) == 5
    assert {r.headers["Idempotency-Key"] for r in sent} == {"c:3"}
    # a fifth stale connection counts as a failed attempt; without a key a write is never resent
    transport, sent = _dropping(5, error)
    result = asyncio.run(go(idempotency_key="c:3", retries=0))
    assert not result.ok and error.__name__ in result.error and len(sent) == 5
    transport, sent = _dropping(1, error)
    result = asyncio.run(go(retries=2))
    assert not result.ok and len(sent) == 1
