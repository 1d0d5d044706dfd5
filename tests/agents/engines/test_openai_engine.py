"""The OpenAI-compatible engine against vLLM's own OpenAI server on the embedded model."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jsonschema
import pytest

from opsagent.agents.case import Case, ExceptionReport
from opsagent.agents.confidence import decision_confidence
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
                                             model="m", timeout_s=2, max_retries=0))
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


ANSWER = '{"tool":"wms_get_shipment","shipment_id":"SHP-104233"}'
PIECES = ['{"tool":"', "wms", "_get", "_shipment", '","shipment_id":"', "SHP-104233", '"}']


class _Server:
    """A local HTTP server in the OpenAI wire format: `failures` answers of 503 first, then a
    completion (with token log-probabilities if the request asked for them)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.bodies = failures, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.bodies.append(body)
                if len(outer.bodies) <= outer.failures:
                    self._send(503, {"error": {"message": "busy", "type": "overloaded"}})
                    return
                logprobs = {"content": [{"token": t, "logprob": -0.01, "bytes": None, "top_logprobs": []}
                                        for t in PIECES]} if body.get("logprobs") else None
                self._send(200, {
                    "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": logprobs,
                                 "message": {"role": "assistant", "content": ANSWER}}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": len(PIECES), "total_tokens": 19}})

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"


@pytest.fixture
def serve() -> Iterator:
    started = []

    def start(failures: int = 0) -> _Server:
        server = _Server(failures)
        threading.Thread(target=server.http.serve_forever, daemon=True).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.http.shutdown()
        server.http.server_close()


def _request() -> GenerationRequest:
    return GenerationRequest(request_id="r", messages=[ChatMessage(role="user", content="x")],
                             json_schema=SCHEMA)


def test_log_probabilities_are_asked_for_and_give_a_confidence(serve):
    server = serve()
    result = asyncio.run(OpenAIEngine(OpenAIEngineConfig(base_url=server.url, model="m")).generate(_request()))
    assert server.bodies[0]["logprobs"] is True
    assert server.bodies[0]["response_format"]["json_schema"]["strict"] is True
    assert "".join(t.text for t in result.tokens) == result.text == ANSWER
    assert decision_confidence(result.text, result.tokens) is not None
    assert (result.prompt_tokens, result.completion_tokens, result.finish_reason) == (12, 7, "stop")


def test_the_stop_token_vllm_lists_after_the_text_is_dropped():
    """vLLM's server lists the sampled stop token (`<|im_end|>`) among the log-probabilities though
    the text omits it (seen against the real server): the tokens end where the text ends."""
    from types import SimpleNamespace

    from opsagent.agents.engines.openai_engine import _tokens

    def choice(pieces, text):
        content = [SimpleNamespace(token=t, logprob=-0.1) for t in pieces]
        return SimpleNamespace(logprobs=SimpleNamespace(content=content), message=SimpleNamespace(content=text))

    assert "".join(t.text for t in _tokens(choice([*PIECES, "<|im_end|>"], ANSWER))) == ANSWER
    assert len(_tokens(choice(PIECES, ANSWER))) == len(PIECES)  # nothing extra: nothing dropped
    odd = _tokens(choice(["x", "y"], ANSWER))  # tokens that do not spell the text are left alone
    assert [t.text for t in odd] == ["x", "y"]


def test_without_log_probabilities_the_confidence_is_unknown(serve):
    server = serve()
    config = OpenAIEngineConfig(base_url=server.url, model="m", logprobs=False)
    result = asyncio.run(OpenAIEngine(config).generate(_request()))
    assert "logprobs" not in server.bodies[0]
    assert result.tokens is None and decision_confidence(result.text, result.tokens) is None


def test_an_overloaded_server_is_retried_by_the_sdk(serve):
    server = serve(failures=2)
    config = OpenAIEngineConfig(base_url=server.url, model="m", max_retries=2)
    result = asyncio.run(OpenAIEngine(config).generate(_request()))
    assert len(server.bodies) == 3 and result.text == ANSWER


def test_retries_run_out_into_an_engine_error(serve):
    server = serve(failures=5)
    config = OpenAIEngineConfig(base_url=server.url, model="m", max_retries=1)
    with pytest.raises(EngineError, match="answered 503"):
        asyncio.run(OpenAIEngine(config).generate(_request()))
    assert len(server.bodies) == 2


def test_an_unknown_engine_setting_is_refused():
    with pytest.raises(ValueError, match="retries"):
        OpenAIEngineConfig(base_url="http://x/v1", model="m", retries=3)


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
        assert result.tokens and "".join(t.text for t in result.tokens) == result.text  # log-probabilities asked
        assert decision_confidence(result.text, result.tokens) is not None
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
