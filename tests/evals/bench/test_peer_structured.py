"""The structured-output LangGraph peer against a scripted OpenAI-compatible server (no engine)
and the real sandbox platform: its tools go through `tools/http.py`, its prompt is opsagent's,
every request carries the class's step schema, it ends on finish or at the step limit."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.agents.prompts import case_message
from opsagent.evals.bench.lc_tools import FINISH
from opsagent.evals.bench.peer import class_tools
from opsagent.evals.bench.peer_structured import SCHEMA_NAME, StructuredPeer, step_schema
from opsagent.evals.catalogue import Instance, make, plant
from opsagent.evals.scoring import GoldReference, score, snapshots
from tests.fakes.local_actors import ThreadedServer

Responder = Callable[[dict[str, Any]], "dict[str, Any] | str"]


class ScriptedChat:
    """An OpenAI-compatible `/v1/chat/completions` whose answers come from `respond(body)` (a step
    is sent as its JSON text, a string as is); it keeps every request body. An answer it has no
    step for (`respond` raises) is a 500, so a peer that calls once too often fails loudly."""

    def __init__(self, respond: Responder, *, finish_reason: str = "stop") -> None:
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        api = FastAPI()

        @api.post("/v1/chat/completions")
        async def complete(body: dict) -> Any:
            self.requests.append(body)
            try:
                out = self.respond(body)
            except Exception as exc:  # the script has no answer: an unexpected call
                return JSONResponse({"error": {"message": f"unexpected call: {exc}"}}, status_code=500)
            text = out if isinstance(out, str) else json.dumps(out)
            return {"id": f"c{len(self.requests)}", "object": "chat.completion", "created": 0, "model": body["model"],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
                    "choices": [{"index": 0, "finish_reason": finish_reason,
                                 "message": {"role": "assistant", "content": text}}]}

        self.server = ThreadedServer(api)

    def __enter__(self) -> ScriptedChat:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    @property
    def base_url(self) -> str:
        return f"{self.server.url}/v1"


def _case_turns(body: dict[str, Any]) -> tuple[dict[str, str], int]:
    """(the case's entities, the assistant turns since its case message) of a request."""
    messages = body["messages"]
    start = max(n for n, m in enumerate(messages) if m["role"] == "user" and m["content"].startswith("New exception"))
    entities = json.loads(messages[start]["content"].split("Entities: ", 1)[1].split(".\n", 1)[0])
    return entities, sum(m["role"] == "assistant" for m in messages[start:])


def gold_steps(instances: list[Instance]) -> Responder:
    """Each case's gold actions as steps, then finish with the gold outcome (evidence unstated)."""
    by_entities = {json.dumps(i.entities, sort_keys=True): i for i in instances}
    books = builtin_playbooks()

    def respond(body: dict[str, Any]) -> dict[str, Any]:
        entities, k = _case_turns(body)
        inst = by_entities[json.dumps(entities, sort_keys=True)]
        evidence = {name: f.unknown for name, f in books[inst.exception_type].evidence.items()}
        if k < len(inst.gold.actions):
            action = inst.gold.actions[k]
            return {"evidence": evidence, "tool": action.tool, "args": action.args}
        if k == len(inst.gold.actions):
            return {"evidence": evidence, "tool": FINISH, "status": inst.gold.outcome, "reason": "as the records say"}
        raise AssertionError(f"a step after finish ({k})")

    return respond


@pytest.fixture(scope="module")
def weights(platform) -> list[Instance]:
    """Two disputes and two failed scale checks: [0] and [1] for single cases, [2:] for the loop."""
    pool = make("weight_mismatch", seed=515151, count=12)
    disputes = [i for i in pool if i.variant == "dispute"][:2]
    failed = [i for i in pool if i.variant == "scale_failed"][:2]
    picked = [disputes[0], failed[0], disputes[1], failed[1]]
    plant(picked, platform)
    return picked


def no_step(body: dict[str, Any]) -> dict[str, Any]:
    raise AssertionError("no step scripted")


def test_the_step_schema_is_the_class_tools_or_finish(registry):
    book = builtin_playbooks()["weight_mismatch"]
    specs = [registry.get(n) for n in class_tools("weight_mismatch", registry)]
    schema = step_schema(book, specs)
    tools = [v["properties"]["tool"]["const"] for v in schema["anyOf"]]
    assert tools == [*(s.name for s in specs), FINISH] and "tms_open_weight_dispute" in tools
    dispute = schema["anyOf"][tools.index("tms_open_weight_dispute")]
    assert list(dispute["properties"]) == ["evidence", "tool", "args"]  # the order of the examples' outputs
    args = dispute["properties"]["args"]
    assert set(args["properties"]) == set(registry.get("tms_open_weight_dispute").parameters["properties"])
    assert args["additionalProperties"] is False and args["properties"]["reason"]["maxLength"] == book.max_string
    assert dispute["properties"]["evidence"]["properties"]["scale_check"] == {"enum": ["unknown", "passed", "failed"]}
    finish = schema["anyOf"][-1]["properties"]
    assert finish["status"]["enum"] == ["resolved", "escalated"] and finish["reason"]["maxLength"] == book.max_string
    assert "evidence" not in step_schema(book, specs, evidence=False)["anyOf"][0]["properties"]


def test_gold_steps_call_the_sandbox_and_end_on_finish(platform, registry, weights):
    inst = weights[0]
    with ScriptedChat(gold_steps([inst])) as chat:
        peer = StructuredPeer(chat.base_url, registry)
        case, box = asyncio.run(peer.run_case(inst, key="sp1"))
    assert case.error is None and case.outcome == "resolved" == box.outcome
    assert [c.tool for c in box.calls] == [a.tool for a in inst.gold.actions] and all(c.ok for c in box.calls)
    assert case.model_calls == len(inst.gold.actions) + 1 == len(chat.requests)
    assert case.prompt_tokens == 100 * case.model_calls and case.completion_tokens == 10 * case.model_calls
    assert case.latency_s == pytest.approx((box.last_write_at - case.received_at).total_seconds())
    # the dispute reached the carrier system through tools/http.py, with the write's idempotency key
    carrier = platform.snapshot("tms")
    assert [r["shipment_id"] for r in carrier["weight_disputes"]].count(inst.entities["shipment_id"]) == 1
    assert f"sp1:{len(inst.gold.actions)}" in [r["key"] for r in carrier["idempotency_keys"]]
    reference = GoldReference.build([inst])
    assert score(inst, box.run(inst.instance_id), snapshots(platform), reference[inst.instance_id]).score == 1.0


def test_every_request_carries_the_schema_and_opsagents_prompt(registry, weights):
    inst = weights[1]
    with ScriptedChat(gold_steps([inst])) as chat:
        peer = StructuredPeer(chat.base_url, registry, max_tokens=77)
        case, _ = asyncio.run(peer.run_case(inst, key="sp2"))
    assert case.outcome == "escalated" and case.error is None
    schema = peer.class_model("weight_mismatch").schema
    book = builtin_playbooks()["weight_mismatch"]
    for body in chat.requests:
        fmt = body["response_format"]
        assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == SCHEMA_NAME
        assert fmt["json_schema"]["schema"] == schema and body["max_completion_tokens"] == 77
        assert body["temperature"] == 0
        assert "tools" not in body
    first, last = chat.requests[0]["messages"], chat.requests[-1]["messages"]
    assert first[0]["role"] == "system" and book.goal in first[0]["content"]
    # the playbook's examples as earlier turns, as opsagent's planner is prompted
    example = book.examples[0]
    assert first[1] == {"role": "user", "content": case_message(example.report)}
    assert json.loads(first[2]["content"]) == example.turns[0].output
    assert sum(m["content"].startswith("New exception") for m in first) == len(book.examples) + 1
    # this case's steps and results follow, the results as the playbook's `observe` shows them
    assert len(last) == len(first) + 2 * len(inst.gold.actions)
    seen = json.loads(last[-1]["content"].split(": ", 1)[1])
    assert last[-1]["content"].startswith("Result of tms_get_shipment")
    assert set(seen) == set(book.observe["tms_get_shipment"])


def test_the_step_limit_ends_a_case_that_never_finishes(registry, weights):
    inst = weights[0]
    read = {"evidence": {"scale_check": "unknown"}, "tool": "wms_get_shipment", "args": inst.entities}
    with ScriptedChat(lambda body: read) as chat:
        peer = StructuredPeer(chat.base_url, registry, max_steps=3)
        case, box = asyncio.run(peer.run_case(inst, key="sp3"))
    assert len(chat.requests) == 3 == case.model_calls == len(box.calls) == case.tool_calls
    assert case.outcome is None and case.error == "no finish within 3 steps"


def test_an_output_that_is_not_a_step_ends_the_case(registry, weights):
    with ScriptedChat(lambda body: '{"tool": "wms_get_shipment", "args": {') as chat:
        case, box = asyncio.run(StructuredPeer(chat.base_url, registry).run_case(weights[0], key="sp4"))
    assert case.error.startswith("not a step") and not box.calls and case.model_calls == 1
    with ScriptedChat(lambda body: {"tool": "tms_delete_everything", "args": {}}) as chat:
        case, box = asyncio.run(StructuredPeer(chat.base_url, registry).run_case(weights[0], key="sp5"))
    assert case.error.startswith("not a step") and not box.calls
    cut = {"evidence": {"scale_check": "unknown"}, "tool": FINISH, "status": "escalated", "reason": "the scale"}
    with ScriptedChat(lambda body: cut, finish_reason="length") as chat:  # valid, but cut at max_tokens
        case, box = asyncio.run(StructuredPeer(chat.base_url, registry).run_case(weights[0], key="sp9"))
    assert case.error.startswith("step cut off at the output budget") and case.outcome is None
    assert case.model_calls == 1 and case.completion_tokens == 10 and not box.calls


def test_a_failed_call_is_shown_to_the_model_and_a_server_error_ends_the_case(registry, weights):
    inst, steps = weights[0], iter([
        {"evidence": {"scale_check": "unknown"}, "tool": "wms_get_shipment", "args": {"shipment_id": "SHP-NOPE"}},
        {"evidence": {"scale_check": "unknown"}, "tool": FINISH, "status": "escalated", "reason": "no such shipment"}])
    with ScriptedChat(lambda body: next(steps)) as chat:
        case, box = asyncio.run(StructuredPeer(chat.base_url, registry).run_case(inst, key="sp6"))
    assert case.outcome == "escalated" and box.calls[0].ok is False
    assert chat.requests[1]["messages"][-1]["content"].startswith("wms_get_shipment failed: HTTP 404")
    with ScriptedChat(no_step) as chat:  # no answer at all: HTTP 500
        case, box = asyncio.run(StructuredPeer(chat.base_url, registry).run_case(inst, key="sp7"))
    assert case.outcome is None and "500 - unexpected call" in case.error and case.model_calls == 0


def test_the_closed_loop_runs_cases_side_by_side(registry, weights):
    with ScriptedChat(gold_steps(weights)) as chat:
        peer = StructuredPeer(chat.base_url, registry)
        results, wall = asyncio.run(peer.closed_loop(weights[2:], 2, key="sp8"))
    assert [c.instance_id for c, _ in results] == [i.instance_id for i in weights[2:]] and wall > 0
    assert [c.outcome for c, _ in results] == [i.gold.outcome for i in weights[2:]]
    assert all(c.ok for _, box in results for c in box.calls)
    assert len(chat.requests) == sum(len(i.gold.actions) + 1 for i in weights[2:])


def test_the_bench_peer_phase_scores_the_structured_peer(monkeypatch, tmp_path):
    """`peer_phase` with the structured kind only, `vllm serve` replaced by the scripted server:
    a fresh platform planted with the level's instances, the gold steps scored correct."""
    from opsagent.evals.bench import run as bench_run
    from opsagent.evals.bench.report import render

    instances = [*make("weight_mismatch", seed=616161, count=2), *make("missed_pickup", seed=616161, count=2)]
    chat = ScriptedChat(gold_steps(instances))

    started: list[dict[str, Any]] = []

    class Server:
        def __init__(self, work, **engine: Any) -> None:
            self.base_url = chat.base_url
            started.append(engine)

        def __enter__(self):
            chat.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            chat.__exit__(*exc)

    monkeypatch.setattr(bench_run, "VllmServer", Server)
    cfg = bench_run.BenchConfig(levels=[], cases_per_level={2: 4}, phases=["peer"], peer_levels=[2],
                                peer_kinds=["structured"], background=2)
    result = bench_run.BenchResult(started_at=datetime.now(UTC), command="t", instances=4, classes=[])
    bench_run.peer_phase(cfg, instances, GoldReference.build(instances), tmp_path, result, log=lambda m: None)
    (level,) = result.peer
    vllm = cfg.system.planner.vllm  # the server runs the model as opsagent's engine does
    assert started == [{"model": vllm.model, "max_model_len": vllm.max_model_len, "dtype": vllm.dtype,
                        "kv_cache_gib": vllm.kv_cache_gib, "block_size": vllm.block_size}]
    assert level.kind == "structured" and level.label == "structured" and level.concurrency == 2
    assert level.correct == level.finished == level.cases == 4 and level.cases_per_s > 0
    text = render(result, title="t", two_step_class="missed_pickup")
    assert "| LangGraph structured | response_format json_schema | 2 | 4 |" in text
