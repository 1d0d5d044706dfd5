"""The peer: LangGraph's prebuilt ReAct agent (`create_react_agent`) with `ChatOpenAI` against vLLM's
OpenAI-compatible server on the same model, the same tools (called through `tools.http`) and the
same cases, scored by `evals.scoring`.

SmolLM2's own chat template has no tools section, so the server is given a ChatML template that
lists the tools in the system message and shows earlier calls as `<tool_call>{...}</tool_call>`
(the Hermes convention), and vLLM's `hermes` tool-call parser reads them back (`tool_choice`
`auto`). With `required`, vLLM constrains every turn to a tool call by grammar instead (no parser
involved); the agent then ends through the `finish` tool, which returns directly.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from opsagent.agents.case import ExceptionReport
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.prompts import case_message
from opsagent.errors import EngineError
from opsagent.evals.bench.lc_tools import Toolbox
from opsagent.evals.catalogue import Instance
from opsagent.policy.config import load_default_policy
from opsagent.tools.registry import ToolRegistry

ToolChoice = Literal["auto", "required"]
SERVED_NAME = "smollm2"

CHAT_TEMPLATE = """\
{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else 'You are a helpful assistant.' -%}
<|im_start|>system
{{ system }}
{%- if tools %}

Tools you can call:
{%- for t in tools %}
{{ t['function'] | tojson }}
{%- endfor %}
To call a tool, answer with <tool_call>{"name": "<tool name>", "arguments": {<arguments>}}</tool_call> and nothing else.
{%- endif %}<|im_end|>
{% for m in messages -%}
{%- if m['role'] == 'system' -%}
{%- elif m['role'] == 'tool' -%}
<|im_start|>user
<tool_response>{{ m['content'] }}</tool_response><|im_end|>
{% elif m['role'] == 'assistant' and m.get('tool_calls') -%}
<|im_start|>assistant
{% for c in m['tool_calls'] -%}
<tool_call>{"name": "{{ c['function']['name'] }}", "arguments": {{ c['function']['arguments'] if c['function']['arguments'] is string else c['function']['arguments'] | tojson }}}</tool_call>
{%- endfor %}<|im_end|>
{% else -%}
<|im_start|>{{ m['role'] }}
{{ m['content'] or '' }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}
"""

SYSTEM = """You are an operations agent of a logistics platform. You resolve one exception by \
calling tools, one at a time, reading each result.
Exception class: {exception_type}. {goal}
When done, call finish with status "resolved" or "escalated"."""


class PeerCase(BaseModel):
    """One case the peer ran."""

    instance_id: str
    exception_type: str
    received_at: datetime
    finished_at: datetime
    latency_s: float = Field(description="Start to the last successful write (or to the agent's end).")
    model_calls: int
    prompt_tokens: int
    completion_tokens: int
    tool_calls: int
    outcome: str | None
    error: str | None = None
    score: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VllmServer:
    """`python -m vllm.entrypoints.openai.api_server` on the embedded model, with tool calling."""

    def __init__(self, work: Path, *, model: str | None = None, max_model_len: int = 4096,
                 dtype: str = "bfloat16", kv_cache_gib: int = 1, block_size: int | None = None) -> None:
        self.work = work
        self.model = model
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.kv_cache_gib = kv_cache_gib
        self.block_size = block_size
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 300.0) -> VllmServer:
        from opsagent.agents.engines.embedded_model import embedded_model_path

        self.work.mkdir(parents=True, exist_ok=True)
        template = self.work / "chat_template.jinja"
        template.write_text(CHAT_TEMPLATE)
        log = open(self.work / "vllm-server.log", "w")
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib), "VLLM_HOST_IP": "127.0.0.1"}
        block = ["--block-size", str(self.block_size)] if self.block_size else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
             "--model", self.model or str(embedded_model_path()), "--served-model-name", SERVED_NAME,
             "--host", "127.0.0.1", "--port", str(self.port), "--dtype", self.dtype, "--enforce-eager",
             "--max-model-len", str(self.max_model_len), "--enable-prefix-caching",
             "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--chat-template", str(template),
             *block],
            env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(f"vllm server exited: {(self.work / 'vllm-server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise EngineError(f"vllm server not healthy after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        self.process = None

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def class_tools(exception_type: str, registry: ToolRegistry) -> list[str]:
    """The tools the default policy allows the class (the ones opsagent's planner is offered)."""
    policy = load_default_policy().classes.get(exception_type)
    return [] if policy is None else [t for t in policy.tools if t in registry]


class ChatPeer(ABC):
    """What every peer shares: one ChatOpenAI client for all cases, the playbooks, the step limit,
    and the closed loop; a peer kind implements `run_case`."""

    def __init__(self, base_url: str, registry: ToolRegistry, *, max_tokens: int = 160, max_steps: int = 6,
                 timeout_s: float = 600.0) -> None:
        from langchain_openai import ChatOpenAI

        self.registry = registry
        self.max_steps = max_steps
        self.llm = ChatOpenAI(base_url=base_url, api_key="none", model=SERVED_NAME, temperature=0,
                              max_tokens=max_tokens, max_retries=0, timeout=timeout_s)
        self.playbooks = builtin_playbooks()

    @abstractmethod
    async def run_case(self, inst: Instance, key: str) -> tuple[PeerCase, Toolbox]:
        """Run one case to its end; the record and the toolbox that holds its calls."""

    async def closed_loop(self, instances: list[Instance], concurrency: int,
                          key: str) -> tuple[list[tuple[PeerCase, Toolbox]], float]:
        """Every instance once with at most `concurrency` in flight; (results, wall seconds)."""
        gate = asyncio.Semaphore(concurrency)

        async def one(inst: Instance) -> tuple[PeerCase, Toolbox]:
            async with gate:
                return await self.run_case(inst, f"{key}:{inst.instance_id}")

        t0 = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in instances))
        return list(results), time.monotonic() - t0


class Peer(ChatPeer):
    """Runs cases with the prebuilt ReAct agent."""

    def __init__(self, base_url: str, registry: ToolRegistry, *, tool_choice: ToolChoice = "auto",
                 **kwargs: Any) -> None:
        super().__init__(base_url, registry, **kwargs)
        self.tool_choice = tool_choice

    async def run_case(self, inst: Instance, key: str) -> tuple[PeerCase, Toolbox]:
        from langgraph.errors import GraphRecursionError
        from langgraph.prebuilt import create_react_agent

        box = Toolbox(self.registry, class_tools(inst.exception_type, self.registry), key=key)
        tools = box.tools()
        model = self.llm.bind_tools(tools, tool_choice=self.tool_choice)
        book = self.playbooks.get(inst.exception_type)
        prompt = SYSTEM.format(exception_type=inst.exception_type, goal=book.goal if book else "")
        agent = create_react_agent(model, tools, prompt=prompt)
        report = ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                 entities=inst.entities)
        received, error, messages = datetime.now(UTC), None, []
        try:
            state = await agent.ainvoke({"messages": [("user", case_message(report))]},
                                        config={"recursion_limit": 2 * self.max_steps + 1})
            messages = state["messages"]
        except GraphRecursionError:
            error = f"no finish within {self.max_steps} steps"
        except Exception as exc:  # a server error or a malformed tool call ends the case
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
        finished = datetime.now(UTC)
        usage = [m.usage_metadata for m in messages if getattr(m, "usage_metadata", None)]
        end = box.last_write_at or finished
        return PeerCase(
            instance_id=inst.instance_id, exception_type=inst.exception_type, received_at=received,
            finished_at=finished, latency_s=(end - received).total_seconds(), model_calls=len(usage),
            prompt_tokens=sum(u.get("input_tokens", 0) for u in usage),
            completion_tokens=sum(u.get("output_tokens", 0) for u in usage), tool_calls=len(box.calls),
            outcome=box.outcome, error=error), box
