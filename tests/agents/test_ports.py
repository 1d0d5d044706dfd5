"""Each port of the case runner is stated once (agents/ports.py); every implementation of it, in
process and on Ray, has exactly its methods with the same parameters, so the copies cannot drift."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from opsagent.agents.executor import Executor
from opsagent.agents.local import LocalPolicy, LocalTracer
from opsagent.agents.planner import Planner
from opsagent.agents.ports import CaseStorePort, ExecutorPort, PlannerPort, PolicyPort, TracePort
from opsagent.cluster.actors import ExecutorActor, PlannerActor, PolicyActor, TraceWriterActor
from opsagent.cluster.adapters import ExecutorPool, PlannerPool, TraceHandle
from opsagent.cluster.case_book import CaseBook
from opsagent.policy.service import PolicyService


def _members(port: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(getattr(port, name)) for name, value in vars(port).items()
            if callable(value) and not name.startswith("_")}


def _shape(sig: inspect.Signature) -> list[tuple[str, Any, bool]]:
    """Parameter names, kinds and whether each has a default (annotations are strings here)."""
    return [(p.name, p.kind, p.default is not inspect.Parameter.empty) for p in sig.parameters.values()
            if p.name != "_ray_trace_ctx"]  # added by Ray to an actor's methods


def _unwrap(cls: Any) -> type:
    """The plain class behind a `@ray.remote` actor class."""
    metadata = getattr(cls, "__ray_metadata__", None)
    return metadata.modified_class if metadata is not None else cls


IMPLEMENTATIONS = [
    (PlannerPort, Planner), (PlannerPort, PlannerPool), (PlannerPort, PlannerActor),
    (PolicyPort, LocalPolicy), (PolicyPort, PolicyService), (PolicyPort, PolicyActor),
    (ExecutorPort, Executor), (ExecutorPort, ExecutorPool),
    (TracePort, LocalTracer), (TracePort, TraceHandle), (TracePort, TraceWriterActor),
    (CaseStorePort, CaseBook),
]


@pytest.mark.parametrize(("port", "impl"), IMPLEMENTATIONS, ids=lambda x: getattr(x, "__name__", str(x)))
def test_every_implementation_has_the_ports_methods_with_its_parameters(port: type, impl: Any) -> None:
    cls = _unwrap(impl)
    for name, sig in _members(port).items():
        method = getattr(cls, name, None)
        assert method is not None, f"{cls.__name__} lacks {port.__name__}.{name}"
        if cls is PolicyService or impl in (PolicyActor, PlannerActor, TraceWriterActor):
            # the plain service and the actors are called synchronously or over Ray: same names
            # and parameters, any sync/async
            pass
        else:
            assert inspect.iscoroutinefunction(method) == inspect.iscoroutinefunction(getattr(port, name)), (
                f"{cls.__name__}.{name}: async differs from the port")
        assert _shape(inspect.signature(method)) == _shape(sig), (
            f"{cls.__name__}.{name}{inspect.signature(method)} differs from {port.__name__}.{name}{sig}")


def test_the_executor_actor_takes_the_executor_ports_call_positionally() -> None:
    """`ExecutorPool` sends (tool, args, case_id, step, permit, dry_run) positionally over Ray."""
    params = [p for p in inspect.signature(_unwrap(ExecutorActor).execute).parameters if p != "_ray_trace_ctx"]
    assert params == ["self", "tool", "args", "case_id", "step", "permit", "dry_run"]


def test_authorize_is_the_call_with_side_effects_and_decide_has_none() -> None:
    """The runner authorizes (reserve, permit); nothing on the runner's side is called `decide`."""
    assert "authorize" in _members(PolicyPort) and "decide" not in _members(PolicyPort)
    for cls in (LocalPolicy, PolicyService, _unwrap(PolicyActor)):
        assert not hasattr(cls, "decide"), cls
