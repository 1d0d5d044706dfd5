"""The LangChain wrappers of the registry's tools, against the real sandbox platform."""

import asyncio
import json

import pytest

from opsagent.errors import ToolError
from opsagent.evals.bench.lc_tools import FINISH, Toolbox
from opsagent.evals.catalogue import make, plant


@pytest.fixture(scope="module")
def pickup(platform):
    inst = make("missed_pickup", seed=424242, count=1)[0]
    plant([inst], platform)
    return inst


def _tool(box, name):
    return next(t for t in box.tools() if t.name == name)


def test_read_returns_the_record_and_is_recorded(registry, pickup):
    box = Toolbox(registry, ["tms_get_pickup", "tkt_assign_ticket"], key="t1")
    assert [t.name for t in box.tools()] == ["tms_get_pickup", "tkt_assign_ticket", FINISH]
    text = asyncio.run(_tool(box, "tms_get_pickup").ainvoke({"pickup_id": pickup.entities["pickup_id"]}))
    assert json.loads(text)["pickup_id"] == pickup.entities["pickup_id"]
    (call,) = box.calls
    assert call.ok and not call.writes and call.duration_ms > 0
    run = box.run(pickup.instance_id)
    assert run.actions[0].tool == "tms_get_pickup" and run.actions[0].ok and run.outcome is None
    assert box.last_write_at is None


def test_failing_call_is_told_to_the_agent_not_raised(registry):
    box = Toolbox(registry, ["tms_get_pickup"], key="t2")
    text = asyncio.run(_tool(box, "tms_get_pickup").ainvoke({"pickup_id": "PU-DOES-NOT-EXIST"}))
    assert text.startswith("failed: HTTP 404")
    assert box.calls[0].ok is False and "404" in box.calls[0].error
    assert box.run("i").actions[0].ok is False


def test_bad_argument_shape_is_a_failed_call(registry):
    box = Toolbox(registry, ["tms_get_pickup"], key="t3")
    text = asyncio.run(box.call("tms_get_pickup", {"pickup_id": "PU-1", "bogus": 1}))
    assert text.startswith("failed:") and "bogus" in text and box.calls[0].ok is False


def test_write_carries_an_idempotency_key_and_counts_as_last_write(platform, registry, pickup):
    box = Toolbox(registry, ["tms_get_pickup", "tms_reschedule_pickup"], key="t4")
    pickup_id = pickup.entities["pickup_id"]
    read = json.loads(asyncio.run(box.call("tms_get_pickup", {"pickup_id": pickup_id})))
    text = asyncio.run(_tool(box, "tms_reschedule_pickup").ainvoke(
        {"pickup_id": pickup_id, "pickup_date": read["next_available_date"], "reason": "carrier missed it"}))
    assert not text.startswith("failed"), text
    assert box.calls[-1].writes and box.last_write_at == box.calls[-1].finished_at
    keys = [row["key"] for row in platform.snapshot("tms")["idempotency_keys"]]
    assert "t4:2" in keys  # the second call of the case's toolbox


def test_finish_sets_the_outcome_and_unknown_tools_are_refused(registry):
    box = Toolbox(registry, [], key="t5")
    finish = _tool(box, FINISH)
    assert finish.return_direct
    asyncio.run(finish.ainvoke({"status": "escalated", "reason": "carrier says collected"}))
    assert box.run("i").outcome == "escalated"
    with pytest.raises(ToolError, match="unknown tool"):
        Toolbox(registry, ["no_such_tool"], key="t6")
