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

from opsagent.agents.engines import ChatMessage, GenerationRequest, OpenAIEngine, OpenAIEngineConfig
from opsagent.errors import EngineError

SCHEMA = {"type": "object", "properties": {"tool": {"enum": ["wms_get_shipment", "finish"]},
                                           "shipment_id": {"enum": ["SHP-104233"]}},
          "required": ["tool", "shipment_id"], "additionalProperties": False}


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
def test_structured_output_from_a_vllm_openai_server(tmp_path):
    from opsagent.agents.engines.embedded_model import embedded_model_path

    port = _free_port()
    # TMPDIR is the run's short temp folder (tests/conftest.py): vLLM puts IPC sockets there.
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
         "--model", str(embedded_model_path()), "--served-model-name", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--dtype", "bfloat16",
         "--enforce-eager", "--max-model-len", "2048"],
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
        engine = OpenAIEngine(OpenAIEngineConfig(base_url=f"http://127.0.0.1:{port}/v1", model="smollm2"))
        request = GenerationRequest(
            request_id="r1", max_tokens=60,
            messages=[ChatMessage(role="system", content="Answer with JSON."),
                      ChatMessage(role="user", content="Read shipment SHP-104233 from the warehouse.")],
            json_schema=SCHEMA)
        result = asyncio.run(engine.generate(request))
        assert result.finish_reason == "stop"
        jsonschema.validate(json.loads(result.text), SCHEMA)
        assert result.prompt_tokens > 10 and result.completion_tokens > 0
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
