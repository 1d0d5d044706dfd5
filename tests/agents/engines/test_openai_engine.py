"""The OpenAI-compatible engine against vLLM's own OpenAI server on the embedded model."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import jsonschema
import pytest

from opsagent.agents.case import Case, ExceptionReport
from opsagent.agents.engines import ChatMessage, GenerationRequest, OpenAIEngine, OpenAIEngineConfig
from opsagent.agents.planner import Planner
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.errors import EngineError
from opsagent.policy.config import load_default_policy
from opsagent.policy.engine import PolicyEngine

SCHEMA = {"type": "object", "properties": {"tool": {"enum": ["wms_get_shipment", "finish"]}},
          "required": ["tool"], "additionalProperties": False}  # the failure tests send no request


class _Recording(OpenAIEngine):
    """The OpenAI engine, keeping the requests the planner sent it."""

    requests: list[GenerationRequest]

    async def generate(self, request: GenerationRequest):
        self.requests = [*getattr(self, "requests", []), request]
        return await super().generate(request)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_an_engine_error():
    engine = OpenAIEngine(OpenAIEngineConfig(base_url=f"http://127.0.0.1:{_free_port()}/v1",
                                             model="m", timeout_s=2))
    request = GenerationRequest(request_id="r", messages=[ChatMessage(role="user", content="x")],
                                json_schema=SCHEMA)
    with pytest.raises(EngineError, match="unreachable"):
        asyncio.run(engine.generate(request))


def test_missing_api_key_env_is_an_engine_error(monkeypatch):
    monkeypatch.delenv("OPSAGENT_TEST_KEY", raising=False)
    engine = OpenAIEngine(OpenAIEngineConfig(base_url="http://127.0.0.1:1/v1", model="m",
                                             api_key_env="OPSAGENT_TEST_KEY"))
    with pytest.raises(EngineError, match="OPSAGENT_TEST_KEY"):
        asyncio.run(engine.start())


@pytest.mark.engine
def test_the_planners_step_schema_is_followed_by_a_vllm_openai_server(tmp_path, registry):
    """The planner's own request (its prompt and its whole step schema, `decoding="schema"` as
    used with engines that cannot score candidates) against vLLM's OpenAI server."""
    from opsagent.agents.engines.embedded_model import embedded_model_path

    port = _free_port()
    # TMPDIR is the run's short temp folder (tests/conftest.py): vLLM puts IPC sockets there.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
         "--model", str(embedded_model_path()), "--served-model-name", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16",
         "--enforce-eager", "--max-model-len", "4096"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("vLLM server did not become healthy in 240 s")
        engine = _Recording(OpenAIEngineConfig(base_url=f"http://127.0.0.1:{port}/v1", model="smollm2"))
        assert not engine.supports_choice  # so the planner asks for the whole step
        planner = Planner(engine, builtin_playbooks(), registry, decoding="schema", max_tokens=160)
        case = Case(report=ExceptionReport(exception_type="weight_mismatch", description="billed 9 kg, scanned 4",
                                           entities={"shipment_id": "SHP-104233"}))
        allowed = PolicyEngine(load_default_policy(), registry).allowed_tools("weight_mismatch")
        turn = asyncio.run(planner.plan(case, allowed))
        (request,) = engine.requests
        offered = {v["properties"]["tool"]["const"] for v in request.json_schema["anyOf"]}
        assert offered == {"wms_get_shipment", "finish"}  # the real step schema, prerequisites applied
        result = turn.generation
        assert result is not None and result.finish_reason == "stop", result
        jsonschema.validate(json.loads(result.text), request.json_schema)
        assert turn.error is None and turn.step is not None and turn.step.tool in offered
        assert result.prompt_tokens > 500 and result.completion_tokens > 0  # the playbook's prompt
    finally:
        _stop(server)


def _stop(server: subprocess.Popen) -> None:
    """Stop the server's whole process group (API server, engine core, worker)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
            server.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
