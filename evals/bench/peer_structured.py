"""The structured-output peer: the LangGraph graph a competent user would build with the same model
when its chat template cannot call tools reliably (the ReAct peer made no tool call on SmolLM2).

Every model call is constrained by vLLM's structured outputs to one step of the class: a tool of
the class with its argument object, or `finish` with a status and a reason (`with_structured_output`,
`method="json_schema"`: the schema goes out as `response_format`). The prompt is opsagent's own
(`agents.prompts.build_messages`: the playbook's goal, its evidence and its worked examples as
earlier turns, then this case's steps and their results), so the two differ only in what opsagent
adds around the model: the schema here is the class's tools as they are (no prerequisites, no
pinned entities, evidence or read values), nothing is concluded without the model, no policy.
The tools are the same, called through `tools.http` by `lc_tools.Toolbox`.

The graph: `decide` (one model call) -> `act` (the tool, or finish) -> `decide` ..., ending on
finish, on an output that is not a step, or after `max_steps` decisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

import jsonschema
from langchain_core.runnables import RunnableConfig
from openai import LengthFinishReasonError

from opsagent.agents.case import Case, ExceptionReport, Step
from opsagent.agents.playbooks import Playbook
from opsagent.agents.prompts import build_messages
from opsagent.evals.bench.lc_tools import FINISH, FinishArgs, Toolbox, args_schema
from opsagent.evals.bench.peer import ChatPeer, PeerCase, class_tools
from opsagent.evals.catalogue import Instance
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolSpec

SCHEMA_NAME = "step"


def step_schema(playbook: Playbook, specs: list[ToolSpec], *, evidence: bool = True) -> dict[str, Any]:
    """One step of the class, as a discriminated union on `tool`: each tool with its argument
    schema (strings bounded by the playbook's `max_string`), or finish with `FinishArgs`. With
    `evidence`, every step first states the playbook's evidence (its values, or `unknown`), as the
    prompt and its examples ask."""
    head: dict[str, Any] = {}
    if evidence and playbook.evidence:
        free = {"type": "string", "maxLength": playbook.max_string}
        facts = {name: {"enum": [f.unknown, *f.values]} if f.values else free for name, f in playbook.evidence.items()}
        head["evidence"] = {"type": "object", "properties": facts, "required": list(facts),
                            "additionalProperties": False}
    variants = [_variant(head, spec.name, {"args": _bounded(args_schema(spec.parameters), playbook.max_string)})
                for spec in specs]
    finish = FinishArgs.model_json_schema()
    variants.append(_variant(head, FINISH, _bounded(finish, playbook.max_string)["properties"]))
    return {"anyOf": variants}


def _variant(head: dict[str, Any], tool: str, rest: dict[str, Any]) -> dict[str, Any]:
    props = {**head, "tool": {"const": tool}, **rest}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def _bounded(schema: dict[str, Any], max_string: int) -> dict[str, Any]:
    """`schema` (an object) with no other properties allowed and every free string at most
    `max_string` characters: the output budget is spent on a step, never cut inside one."""
    props = {}
    for name, prop in (schema.get("properties") or {}).items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        if prop.get("type") == "string" and "enum" not in prop:
            prop["maxLength"] = min(prop.get("maxLength", max_string), max_string)
        props[name] = prop
    return {"type": "object", "properties": props, "required": list(schema.get("required") or []),
            "additionalProperties": False}


@dataclass(frozen=True)
class ClassModel:
    """One class's tools, its step schema, the model bound to that schema and its validator."""

    specs: list[ToolSpec]
    schema: dict[str, Any]
    model: Any  # the structured-output runnable (include_raw: raw message, parsed step, parsing error)
    validator: jsonschema.Draft202012Validator


@dataclass
class _CaseRun:
    """What one case's graph run reads and counts (passed in the run's config, not the state)."""

    playbook: Playbook
    cls: ClassModel
    report: ExceptionReport
    box: Toolbox
    model_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def count(self, prompt_tokens: int, completion_tokens: int) -> None:
        """One model call and its tokens."""
        self.model_calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens


class _State(TypedDict, total=False):
    steps: list[Step]
    pending: dict[str, Any] | None
    error: str | None
    finished: bool


class StructuredPeer(ChatPeer):
    """Runs cases with a LangGraph decide/act graph whose every model call is a schema-constrained step."""

    def __init__(self, base_url: str, registry: ToolRegistry, *, evidence: bool = True, **kwargs: Any) -> None:
        super().__init__(base_url, registry, **kwargs)
        self.evidence = evidence
        self.graph = self._graph()
        self._models: dict[str, ClassModel] = {}

    def class_model(self, exception_type: str) -> ClassModel:
        """The class's tools and step schema, and the model bound to it (built once per class)."""
        if exception_type not in self._models:
            specs = [self.registry.get(n) for n in class_tools(exception_type, self.registry)]
            schema = step_schema(self.playbooks[exception_type], specs, evidence=self.evidence)
            model = self.llm.with_structured_output({"name": SCHEMA_NAME, "schema": schema}, method="json_schema",
                                                    include_raw=True)
            self._models[exception_type] = ClassModel(specs, schema, model, jsonschema.Draft202012Validator(schema))
        return self._models[exception_type]

    def _graph(self) -> Any:
        from langgraph.graph import END, START, StateGraph

        graph = StateGraph(_State)
        graph.add_node("decide", self._decide)
        graph.add_node("act", self._act)
        graph.add_edge(START, "decide")
        graph.add_conditional_edges("decide", lambda s: "act" if s.get("pending") else END, ["act", END])
        graph.add_conditional_edges("act", self._after_act, ["decide", END])
        return graph.compile()

    def _after_act(self, state: _State) -> str:
        from langgraph.graph import END

        return END if state.get("finished") or state.get("error") else "decide"

    async def _decide(self, state: _State, config: RunnableConfig) -> _State:
        run: _CaseRun = config["configurable"]["case"]
        steps = state.get("steps") or []
        if len(steps) >= self.max_steps:
            return {"pending": None, "error": f"no finish within {self.max_steps} steps"}
        messages = build_messages(run.playbook, run.cls.specs, Case(report=run.report, steps=steps))
        try:
            out = await run.cls.model.ainvoke([{"role": m.role, "content": m.content} for m in messages])
        except LengthFinishReasonError as exc:  # the client refuses to parse an output cut at max_tokens
            usage, choices = exc.completion.usage, exc.completion.choices
            run.count(usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
            text = choices[0].message.content if choices else ""
            return {"pending": None, "error": f"step cut off at the output budget: {str(text)[:200]!r}"}
        usage = getattr(out["raw"], "usage_metadata", None) or {}
        run.count(usage.get("input_tokens", 0), usage.get("output_tokens", 0))
        step = out.get("parsed")
        problem = out.get("parsing_error")
        if problem is None:  # the parser completes a partial object: only the schema says it is a step
            problem = next(iter(run.cls.validator.iter_errors(step)), None)
        if problem is not None:
            return {"pending": None, "error": f"not a step: {str(getattr(problem, 'message', problem))[:200]}"}
        return {"pending": step}

    async def _act(self, state: _State, config: RunnableConfig) -> _State:
        run: _CaseRun = config["configurable"]["case"]
        step, steps = state["pending"], list(state.get("steps") or [])
        if step["tool"] == FINISH:
            await run.box.finish(step["status"], step["reason"])
            return {"pending": None, "finished": True}
        args = step.get("args") or {}
        await run.box.call(step["tool"], args)
        call = run.box.calls[-1]
        steps.append(Step(step=len(steps) + 1, tool=step["tool"], args=args, evidence=step.get("evidence") or {},
                          executed=True, ok=call.ok, result=call.result, error=call.error))
        return {"pending": None, "steps": steps}

    async def run_case(self, inst: Instance, key: str) -> tuple[PeerCase, Toolbox]:
        cls = self.class_model(inst.exception_type)
        box = Toolbox(self.registry, [s.name for s in cls.specs], key=key)
        run = _CaseRun(playbook=self.playbooks[inst.exception_type], cls=cls, box=box,
                       report=ExceptionReport(exception_type=inst.exception_type, description=inst.description,
                                              entities=inst.entities))
        received, error = datetime.now(UTC), None
        try:
            state = await self.graph.ainvoke({"steps": []}, config={
                "configurable": {"case": run}, "recursion_limit": 2 * self.max_steps + 3})
            error = state.get("error")
        except Exception as exc:  # a server error ends the case, as in the ReAct peer
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
        finished = datetime.now(UTC)
        end = box.last_write_at or finished
        return PeerCase(
            instance_id=inst.instance_id, exception_type=inst.exception_type, received_at=received,
            finished_at=finished, latency_s=(end - received).total_seconds(), model_calls=run.model_calls,
            prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens, tool_calls=len(box.calls),
            outcome=box.outcome, error=error), box
