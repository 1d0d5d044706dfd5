"""Score an agent's run of a catalogue instance against its gold (tau-bench style, and stricter).

An instance scores 1.0 only if all four hold, else 0.0:

- state: the instance's rows in the systems of record equal those the gold leaves when it is
  replayed on a fresh platform. An instance's rows are those holding one of its identifying entity
  values; columns that depend on time, sequence counters or free text are compared only as set or
  unset; the idempotency ledger and commentary tables (ticket notes) are left out;
- assertions: every end-state assertion of the gold holds on the agent's platform;
- actions: every gold action, reads included, was executed with the same key arguments (a read
  that must find no record counts once tried);
- outcome: the case ended as the gold says (resolved or escalated).

Every gold has at least one required read, so an agent that does nothing scores 0 everywhere;
on escalating instances the ticket must also really be with the right team.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import BaseModel, Field

from opsagent.errors import InputError
from opsagent.evals.catalogue import Gold, Instance, plant
from opsagent.evals.catalogue._model import same
from opsagent.tools.http import call_tool
from opsagent.tools.platform.launcher import COMMENTARY, VOLATILE, Platform
from opsagent.tools.registry import ToolRegistry

Snapshots = dict[str, dict[str, list[dict[str, Any]]]]  # system -> table -> rows
State = dict[str, list[dict[str, Any]]]  # "system.table" -> the instance's normalised rows
_SET = "<set>"


class ActionRecord(BaseModel):
    """A tool call an agent proposed, and whether it ran and succeeded."""

    tool: str
    args: dict[str, Any] = Field(default_factory=dict)
    executed: bool = True
    ok: bool = True


class AgentRun(BaseModel):
    """What an agent did on one instance."""

    instance_id: str
    actions: list[ActionRecord] = Field(default_factory=list)
    outcome: str | None = Field(None, description="resolved | escalated, or None if the case never ended.")

    @classmethod
    def from_case(cls, instance_id: str, case: Any) -> AgentRun:
        """From an `agents.case.Case`, or its JSON view (`GET /v1/cases/{case_id}`): the tool
        steps, and the status if the case ended resolved or escalated."""
        data = case if isinstance(case, dict) else case.model_dump(mode="json")
        actions = [ActionRecord(tool=s["tool"], args=s.get("args") or {}, executed=bool(s.get("executed")),
                                ok=bool(s.get("ok"))) for s in data.get("steps", []) if s["tool"] != "finish"]
        status = data.get("status")
        return cls(instance_id=instance_id, actions=actions,
                   outcome=status if status in ("resolved", "escalated") else None)


class Score(BaseModel):
    instance_id: str
    exception_type: str
    variant: str
    score: float
    outcome_ok: bool
    state_ok: bool
    state_digest: str = Field(description="sha256 of the instance's normalised rows after the run.")
    gold_digest: str = Field(description="The same after the gold replay; state_ok is their equality.")
    failed_assertions: list[str]
    missing_actions: list[str]
    state_diff: list[str]


def snapshots(platform: Platform) -> Snapshots:
    """Every row of every system of the platform."""
    return {system: platform.snapshot(system) for system in platform.base_urls}


def instance_state(snaps: Snapshots, keys: list[str]) -> State:
    """The rows that hold one of `keys`, normalised (see the module docstring) and sorted."""
    wanted = set(keys)
    state: State = {}
    for system, tables in sorted(snaps.items()):
        for table, rows in sorted(tables.items()):
            if table == "idempotency_keys" or table in COMMENTARY.get(system, ()):
                continue
            volatile = VOLATILE.get(system, {}).get(table, set())
            mine = [_normalise(r, volatile) for r in rows
                    if any(isinstance(v, str) and v in wanted for v in r.values())]
            if mine:
                state[f"{system}.{table}"] = sorted(mine, key=_canonical)
    return state


def state_digest(state: State) -> str:
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def missing_actions(gold: Gold, run: AgentRun) -> list[str]:
    """The gold actions the run has no match for (each run action matches at most one)."""
    unused = [a for a in run.actions if a.executed]
    missing = []
    for want in gold.actions:
        match = next((a for a in unused if a.tool == want.tool and a.ok == want.expect_ok
                      and all(k in a.args and same(a.args[k], want.args[k]) for k in want.key_args)), None)
        if match is None:
            missing.append(want.label())
        else:
            unused.remove(match)
    return missing


def score(inst: Instance, run: AgentRun, snaps: Snapshots, gold_state: State) -> Score:
    """Score one run, given the agent's platform snapshots and the gold replay's state."""
    mine = instance_state(snaps, inst.keys)
    digest, gold_digest = state_digest(mine), state_digest(gold_state)
    diff = [] if digest == gold_digest else _diff(gold_state, mine)
    failed = [f for a in inst.gold.assertions if (f := a.failure(snaps))]
    missing = missing_actions(inst.gold, run)
    outcome_ok = run.outcome == inst.gold.outcome
    ok = outcome_ok and digest == gold_digest and not failed and not missing
    return Score(instance_id=inst.instance_id, exception_type=inst.exception_type, variant=inst.variant,
                 score=1.0 if ok else 0.0, outcome_ok=outcome_ok, state_ok=digest == gold_digest,
                 state_digest=digest, gold_digest=gold_digest, failed_assertions=failed,
                 missing_actions=missing, state_diff=diff)


class GoldReference:
    """The end state of every instance after its gold was replayed on a fresh platform."""

    def __init__(self, states: dict[str, State]):
        self.states = states

    @classmethod
    def build(cls, instances: list[Instance]) -> GoldReference:
        """Start an empty platform, plant the instances, replay each gold, keep each instance's state."""
        with Platform(background=0) as fresh:
            plant(instances, fresh)
            registry = fresh.registry()
            for inst in instances:
                run = replay_gold(inst, registry)
                for action, done in zip(inst.gold.actions, run.actions, strict=True):
                    if done.ok != action.expect_ok:
                        raise InputError(f"{inst.instance_id}: gold action {action.label()} "
                                         f"{'failed' if action.expect_ok else 'unexpectedly succeeded'}")
            snaps = snapshots(fresh)
        return cls({inst.instance_id: instance_state(snaps, inst.keys) for inst in instances})

    def __getitem__(self, instance_id: str) -> State:
        return self.states[instance_id]


Agent = Callable[[Instance, ToolRegistry], AgentRun]


def evaluate(instances: list[Instance], agent: Agent, platform: Platform,
             reference: GoldReference | None = None) -> list[Score]:
    """Run `agent` on every instance (already planted on `platform`) and score each run."""
    registry = platform.registry()
    runs = [agent(inst, registry) for inst in instances]
    snaps = snapshots(platform)
    reference = reference or GoldReference.build(instances)
    return [score(inst, run, snaps, reference[inst.instance_id])
            for inst, run in zip(instances, runs, strict=True)]


def replay_gold(inst: Instance, registry: ToolRegistry) -> AgentRun:
    """The gold baseline: execute the gold actions as they are, end with the gold outcome."""
    actions = asyncio.run(_execute(registry, [(a.tool, a.args) for a in inst.gold.actions], inst.instance_id))
    return AgentRun(instance_id=inst.instance_id, actions=actions, outcome=inst.gold.outcome)


def do_nothing(inst: Instance, registry: ToolRegistry) -> AgentRun:
    """The empty baseline: no call at all, and no outcome."""
    return AgentRun(instance_id=inst.instance_id)


async def _execute(registry: ToolRegistry, calls: list[tuple[str, dict]], key: str) -> list[ActionRecord]:
    out = []
    async with httpx.AsyncClient(timeout=10.0) as client:
        for i, (tool, args) in enumerate(calls):
            spec = registry.get(tool)
            result = await call_tool(client, spec, registry.base_url(spec.system), args,
                                     idempotency_key=f"{key}:{i}" if spec.writes else None)
            out.append(ActionRecord(tool=tool, args=args, ok=result.ok))
    return out


def _canonical(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def _normalise(row: dict[str, Any], volatile: set[str]) -> dict[str, Any]:
    return {k: ((_SET if v is not None else None) if k in volatile or k.endswith("_at") else v)
            for k, v in row.items()}


def _diff(want: State, got: State, limit: int = 5) -> list[str]:
    """Short descriptions of how `got` differs from `want`."""
    out = []
    for table in sorted(set(want) | set(got)):
        a, b = want.get(table, []), got.get(table, [])
        if a == b:
            continue
        extra = [r for r in b if r not in a]
        lost = [r for r in a if r not in b]
        out.append(f"{table}: expected {_short(lost)} got {_short(extra)}")
    return out[:limit]


def _short(rows: list[dict], limit: int = 300) -> str:
    text = json.dumps(rows, default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."
