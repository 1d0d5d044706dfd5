"""The executor writes only with a policy permit for exactly that call: bypass attempts fail."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from opsagent.agents.executor import Executor
from opsagent.policy.permits import issue_permit, new_permit_key
from opsagent.policy.records import args_digest

KEY = new_permit_key()
TOOL = "tms_open_weight_dispute"


def _dispute(platform, sid):
    return httpx.get(f"{platform.base_urls['tms']}/shipments/{sid}").json()["open_dispute_id"]


def _permit(args, *, case_id="case-1", step=3, key=KEY, ttl=60, tool=TOOL, now=None):
    return issue_permit(tool=tool, args_digest=args_digest(tool, args), case_id=case_id, step=step,
                        policy_version="v", key=key, ttl_s=ttl, now=now)


@pytest.fixture
def dispute_args(instance):
    inst = instance()
    return {"shipment_id": inst.entities["shipment_id"],
            "claimed_weight_kg": inst.facts["scanned_weight_kg"], "reason": "scan on a checked scale"}


def _run(executor, args, **kw):
    kw.setdefault("case_id", "case-1")
    kw.setdefault("step", 3)
    return asyncio.run(executor.execute(TOOL, args, **kw))


@pytest.mark.parametrize("make_permit,why", [
    (lambda a: None, "no permit"),
    (lambda a: _permit(a, key=new_permit_key()), "signature"),
    (lambda a: _permit({**a, "claimed_weight_kg": 0.1}), "other arguments"),
    (lambda a: _permit(a, step=4), "step"),
    (lambda a: _permit(a, case_id="case-2"), "case"),
    (lambda a: _permit(a, tool="tms_withdraw_weight_dispute"), "tool"),
    (lambda a: _permit(a, now=time.time() - 120), "expired"),
    (lambda a: {**_permit(a).model_dump(), "step": 3, "signature": "0" * 64}, "signature"),
])
def test_writes_without_a_matching_permit_never_reach_the_system(
        registry, platform, dispute_args, make_permit, why):
    result = _run(Executor(registry, KEY), dispute_args, permit=make_permit(dispute_args))
    assert not result.ok and result.status_code is None and why in result.error
    assert _dispute(platform, dispute_args["shipment_id"]) is None


def test_a_valid_permit_writes_once_even_when_retried(registry, platform, dispute_args):
    executor = Executor(registry, KEY)
    permit = _permit(dispute_args)
    first = _run(executor, dispute_args, permit=permit)
    again = _run(executor, dispute_args, permit=permit)  # a retry: same case and step
    assert first.ok and again.ok and again.body == first.body
    assert _dispute(platform, dispute_args["shipment_id"]) == first.body["dispute_id"]


def test_reads_and_dry_runs_need_no_permit_and_change_nothing(registry, platform, dispute_args):
    executor = Executor(registry, KEY)
    sid = dispute_args["shipment_id"]
    read = asyncio.run(executor.execute("tms_get_shipment", {"shipment_id": sid}, case_id="c", step=1))
    assert read.ok and read.body["shipment_id"] == sid
    preview = _run(executor, dispute_args, dry_run=True)
    assert preview.ok and preview.dry_run and preview.body["diff"]
    assert _dispute(platform, sid) is None


def test_one_executor_dispatches_by_source(registry, platform, dispute_args, monkeypatch):
    """Sandbox tools go over HTTP as before (no auth, no retries); MCP tools go to their server."""
    import secrets as _secrets

    from opsagent.tools.building import build_registry
    from opsagent.tools.sources import AuthHeader, McpSource
    from tests.fakes.mcp_server import serve_http

    assert registry.source("tms").retries == 0 and registry.source("tms").auth == []
    token = "pcl-" + _secrets.token_hex(12)
    monkeypatch.setenv("PARCELS_TOKEN", token)
    with serve_http(token) as url:
        source = McpSource(name="parcels", transport="http", url=url, prefix="pcl_",
                           auth=[AuthHeader(env="PARCELS_TOKEN", scheme="Bearer")])
        mixed = build_registry([source], base=registry)
        executor = Executor(mixed, KEY)
        sid = dispute_args["shipment_id"]

        async def go():
            try:
                shipment = await executor.execute("tms_get_shipment", {"shipment_id": sid}, case_id="c", step=1)
                parcel = await executor.execute("pcl_get_parcel", {"parcel_id": "P-1"}, case_id="c", step=2)
                write = await executor.execute(TOOL, dispute_args, case_id="case-mixed", step=3,
                                               permit=_permit(dispute_args, case_id="case-mixed"))
                return shipment, parcel, write
            finally:
                await executor.close()

        shipment, parcel, write = asyncio.run(go())
    assert shipment.ok and shipment.status_code == 200 and shipment.body["shipment_id"] == sid
    assert parcel.ok and parcel.status_code is None and parcel.body["parcel_id"] == "P-1"
    assert write.ok and _dispute(platform, sid) == write.body["dispute_id"]
