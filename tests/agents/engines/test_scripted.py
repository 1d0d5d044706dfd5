import asyncio

import pytest

from opsagent.agents.engines import ChatMessage, GenerationRequest, ScriptedEngine
from opsagent.errors import UnexpectedEngineCall


def _request(text="hi"):
    return GenerationRequest(request_id="r", messages=[ChatMessage(role="user", content=text)],
                             json_schema={"type": "object"})


def test_replays_in_order_and_records_requests():
    engine = ScriptedEngine([{"a": 1}, "raw", lambda req: {"echo": req.messages[-1].content}])
    texts = [asyncio.run(engine.generate(_request(t))).text for t in ("x", "y", "z")]
    assert texts == ['{"a": 1}', "raw", '{"echo": "z"}']
    assert [r.messages[-1].content for r in engine.requests] == ["x", "y", "z"]
    engine.assert_done()


def test_extra_call_fails_loudly():
    engine = ScriptedEngine([{"a": 1}])
    asyncio.run(engine.generate(_request()))
    with pytest.raises(UnexpectedEngineCall, match="no step left"):
        asyncio.run(engine.generate(_request()))


def test_leftover_steps_fail_assert_done():
    engine = ScriptedEngine([{"a": 1}, {"b": 2}])
    asyncio.run(engine.generate(_request()))
    with pytest.raises(UnexpectedEngineCall, match="1 unused"):
        engine.assert_done()
