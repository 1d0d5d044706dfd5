"""One benchmark run: opsagent at each concurrency level, then the floor, then the LangGraph peer.

Phases run one after another, each with the cores to itself: (1) one Ray runtime and one
opsagent system (vLLM planner, recorded by `RecordingEngine`), a fresh platform planted with the
level's instances for every level, classes set to `autonomous` by a bench admin through the
autonomy store, a closed loop over the API; (2) Ray stopped, the floor and the engine choices
on an in-process `VllmEngine`; (3) `vllm serve` and the LangGraph peers on the same instances: the
prebuilt ReAct agent per tool choice, and the structured-output graph (`peer_structured.py`).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from opsagent.agents.tracing.writer import TraceWriter
from opsagent.cluster.config import SystemConfig
from opsagent.errors import InputError
from opsagent.evals.bench.breakdown import CaseBreakdown, breakdown, case_end
from opsagent.evals.bench.floor import (
    CaseFloor, ChoiceResult, case_floor, floor_requests, measure_choices, measure_without_prefix_cache,
    planner_floor, tool_floor,
)
from opsagent.evals.bench.load import DONE, Api, LevelRun, closed_loop
from opsagent.evals.bench.peer import ChatPeer, Peer, PeerCase, ToolChoice, VllmServer
from opsagent.evals.bench.peer_structured import StructuredPeer
from opsagent.evals.bench.recording import RecordingEngine, read_timings
from opsagent.evals.bench.stats import Summary, throughput
from opsagent.evals.bench.trace_rows import load_traces, recorded_calls, recorded_tools
from opsagent.evals.bench.trace_writes import sample_events
from opsagent.evals.catalogue import Instance, plant
from opsagent.evals.scoring import AgentRun, GoldReference, score, snapshots
from opsagent.tools.registry import ToolRegistry

Phase = Literal["system", "floor", "choices", "peer"]
PeerKind = Literal["react", "structured"]


class BenchConfig(BaseModel):
    """What to run; sizes are explicit because every figure costs engine time on 2 cores."""

    model_config = {"extra": "forbid"}
    levels: list[int] = Field(description="Concurrency levels of the opsagent runs.")
    cases_per_level: dict[int, int] = Field(description="Cases run at each level.")
    phases: list[Phase] = Field(default_factory=lambda: ["system", "floor", "choices", "peer"])
    choice_cases: int = Field(4, ge=1, description="Cases whose requests the engine choices re-issue.")
    batch: int = Field(16, ge=1, description="Cases at once in the batching choice.")
    peer_levels: list[int] = Field(default_factory=lambda: [1, 16])
    peer_kinds: list[PeerKind] = Field(default_factory=lambda: ["react", "structured"], description=(
        "LangGraph peers run: the prebuilt ReAct agent (once per tool choice) and the graph whose model "
        "calls are structured-output steps."))
    peer_tool_choices: list[ToolChoice] = Field(default_factory=lambda: ["auto", "required"],
                                                description="The ReAct peer's tool_choice values.")
    system: SystemConfig = Field(default_factory=SystemConfig)
    poll_s: float = Field(0.25, description="Seconds between reads of the case list (one request each).")
    timeout_s: float = 1800.0
    background: int = Field(25, description="Ordinary shipments each fresh platform is seeded with.")


class LevelResult(BaseModel):
    """opsagent at one concurrency level."""

    concurrency: int
    cases: int
    wall_s: float
    cases_per_s: float | None
    latency: Summary
    by_class: dict[str, Summary]
    statuses: dict[str, int]
    correct: int
    breakdowns: list[CaseBreakdown]
    timed_out: int = 0


class PeerLevel(BaseModel):
    """A LangGraph peer at one concurrency level (and, for ReAct, one tool choice)."""

    kind: PeerKind = "react"
    tool_choice: str = Field(description="ReAct: the tool_choice; structured: `json_schema` (response_format).")
    concurrency: int
    cases: int
    wall_s: float
    cases_per_s: float | None
    latency: Summary
    correct: int
    finished: int = Field(description="Cases the agent ended through finish.")
    rows: list[PeerCase]

    @property
    def label(self) -> str:
        return f"ReAct {self.tool_choice}" if self.kind == "react" else "structured"


class BenchResult(BaseModel):
    started_at: datetime
    wall_s: float = 0.0
    command: str
    instances: int
    classes: list[str]
    model: str | None = None
    export_ms: float | None = None
    levels: list[LevelResult] = Field(default_factory=list)
    floor: list[CaseFloor] = Field(default_factory=list)
    floor_calls: int = 0
    floor_same_outputs: int = 0
    choices: list[ChoiceResult] = Field(default_factory=list)
    peer: list[PeerLevel] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    runs: list[LevelRun] = Field(default_factory=list, description="Which case ran which instance, per level.")


def level_instances(instances: list[Instance], n: int) -> list[Instance]:
    """The first `n` instances, interleaving classes so every level sees each class (no instance
    twice in a level: a second run of the same instance would find the first one's writes)."""
    if n > len(instances):
        raise InputError(f"a level of {n} cases needs a set of at least {n} instances, the set has {len(instances)}")
    by_class: dict[str, list[Instance]] = {}
    for inst in instances:
        by_class.setdefault(inst.exception_type, []).append(inst)
    order = [inst for group in zip(*by_class.values(), strict=False) for inst in group]
    order += [i for i in instances if i not in order]
    return order[:n]


def export_latency_ms(folder: Path, n: int = 60) -> float:
    """Median latency of one acknowledged trace export (write-ahead log + fsync) on this disk."""
    writer = TraceWriter(folder)
    try:
        times = []
        for event in sample_events(n):
            t = time.perf_counter()
            writer.export([event])
            times.append((time.perf_counter() - t) * 1000)
    finally:
        writer.close()
    return statistics.median(times)


class _SystemPhase:
    """Phase 1: the opsagent system over every level, on one Ray runtime."""

    def __init__(self, cfg: BenchConfig, instances: list[Instance], work: Path,
                 reference: GoldReference, result: BenchResult, log, progress=None) -> None:
        self.cfg, self.instances, self.work, self.reference = cfg, instances, work, reference
        self.result, self.log = result, log
        self.progress = progress  # (total, label) -> a CaseProgress (opsagent.progress), or None
        self.traces = work / "traces"
        self.timings = work / "engine.jsonl"
        self.runs: list[tuple[LevelRun, list[Instance]]] = []

    def run(self) -> None:
        from opsagent.cluster.runtime import start_ray, stop_ray
        from opsagent.cluster.system import OpsAgentSystem, make_engine
        from opsagent.policy.identity import Role, TokenStore
        from opsagent.tools.platform.launcher import Platform

        state = self.work / "state"
        config = self.cfg.system.model_copy(update={
            "traces_dir": self.traces, "state_dir": state, "state": None,
            "planner": self.cfg.system.planner.model_copy(update={"warm_classes": self.result.classes})})
        self.result.notes.append(autonomous(state, self.result.classes))
        engine = RecordingEngine(make_engine(config), self.timings)
        start_ray(num_cpus=2)
        system, api, ports = None, None, {}
        try:
            for level in self.cfg.levels:
                insts = level_instances(self.instances, self.cfg.cases_per_level[level])
                with Platform(ports=ports, background=self.cfg.background) as platform:
                    ports = ports or {s: int(u.rsplit(":", 1)[1]) for s, u in platform.base_urls.items()}
                    plant(insts, platform)
                    if system is None:
                        t0 = time.monotonic()
                        system = OpsAgentSystem(config, platform.registry(), engine=engine)
                        system.start(say=self.log)
                        self.result.notes.append(
                            f"planner start-up: engine {system.startup['engine_s']} s, "
                            f"{system.startup['classes']} class prefixes warmed in {system.startup['warm_s']} s")
                        url = system.serve(port=0)
                        api = Api(url, TokenStore(system.tokens_path).add("bench", [Role.submitter, Role.auditor]))
                        self.result.model = system.model
                        self.log(f"system ready in {time.monotonic() - t0:.0f} s ({system.model})")
                    self.log(f"level {level}: {len(insts)} cases")
                    bar = self.progress(len(insts), f"level {level}") if self.progress else None
                    try:
                        run = closed_loop(api, insts, level, poll_s=self.cfg.poll_s, timeout_s=self.cfg.timeout_s,
                                          on_poll=(lambda s, bar=bar: bar.show(s, DONE.__contains__)) if bar else None)
                    finally:
                        if bar is not None:
                            bar.close()
                    system.flush_traces()
                    self.result.levels.append(self._level(run, insts, api, platform))
                    self.runs.append((run, insts))
                    self.result.runs.append(run)
                    lv = self.result.levels[-1]
                    self.log(f"level {level}: {lv.cases_per_s or 0:.3f} cases/s, p50 {lv.latency.p50 or 0:.2f} s, "
                             f"{lv.correct}/{lv.cases} correct")
        finally:
            if api is not None:
                api.close()
            if system is not None:
                system.stop()
            stop_ray()

    def _level(self, run: LevelRun, insts: list[Instance], api: Api, platform) -> LevelResult:
        by_id = {i.instance_id: i for i in insts}
        snaps = snapshots(platform)
        correct = 0
        statuses: dict[str, int] = {}
        for case_id, inst_id in run.cases.items():
            view = api.case(case_id)
            statuses[view["status"]] = statuses.get(view["status"], 0) + 1
            inst = by_id[inst_id]
            correct += score(inst, AgentRun.from_case(inst_id, view), snaps, self.reference[inst_id]).score == 1.0
        traces = load_traces(self.traces, list(run.cases), read_timings(self.timings))
        rows = [b for t in traces.values() if (b := breakdown(t, self.result.export_ms or 0.0)) is not None]
        by_class: dict[str, list[float]] = {}
        for b in rows:
            by_class.setdefault(b.exception_type, []).append(b.latency_ms / 1000)
        return LevelResult(
            concurrency=run.concurrency, cases=len(run.cases), wall_s=run.wall_s,
            cases_per_s=throughput(len(run.cases) - len(run.timed_out), run.wall_s),
            latency=Summary.of([b.latency_ms / 1000 for b in rows]),
            by_class={k: Summary.of(v) for k, v in sorted(by_class.items())}, statuses=statuses,
            correct=correct, breakdowns=rows, timed_out=len(run.timed_out))


def autonomous(state: Path, classes: list[str]) -> str:
    """Set `classes` to autonomous in the system's autonomy store, as a bench admin (recorded in
    the mode history with the reason), before the system starts; returns a line saying so."""
    from opsagent.policy.autonomy import AutonomyStore
    from opsagent.policy.identity import Role, TokenStore
    from opsagent.policy.modes import Mode
    from opsagent.policy.state import state_db

    state.mkdir(parents=True, exist_ok=True)
    tokens = TokenStore(state_db(state))
    admin = tokens.authenticate(tokens.add("bench-admin", [Role.admin]))
    store = AutonomyStore(state_db(state))
    try:
        for name in classes:
            store.set_mode(name, Mode.autonomous, identity=admin,
                           reason="bench: the benchmark measures writes really happening")
    finally:
        store.close()
    return f"autonomy: {', '.join(classes)} set to autonomous by bench-admin before the run"


def floor_phase(cfg: BenchConfig, phase: _SystemPhase, instances: list[Instance], result: BenchResult, log) -> None:
    """Phase 2: the floor of every benchmarked case, and (with `choices`) the engine choices."""
    by_id = {i.instance_id: i for i in instances}
    runs = [(run, [by_id[i] for i in run.cases.values()]) for run in result.runs]
    case_level = {cid: run.concurrency for run, _ in runs for cid in run.cases}
    case_inst = {cid: iid for run, _ in runs for cid, iid in run.cases.items()}
    classes = {cid: next(i.exception_type for i in instances if i.instance_id == iid) for cid, iid in case_inst.items()}
    timings = read_timings(phase.timings)
    requests = floor_requests(recorded_calls(phase.traces, list(case_inst)), timings, classes)
    traces = load_traces(phase.traces, list(case_inst), timings)
    tools: dict[str, list] = {}
    for run, insts in runs:
        tools |= tool_floor(insts, recorded_tools(phase.traces, list(run.cases)), run.cases, cfg.background)
    subset = dict(list(requests.items())[:cfg.choice_cases])

    async def engine_work() -> tuple[dict, list[ChoiceResult]]:
        from opsagent.agents.engines.vllm_engine import VllmEngine

        engine = VllmEngine(cfg.system.planner.vllm)
        await engine.start()
        try:
            log(f"floor: {sum(map(len, requests.values()))} recorded calls of {len(requests)} cases")
            planner = await planner_floor(engine, requests)
            choices = []
            if "choices" in cfg.phases:
                log(f"choices: {sum(map(len, subset.values()))} calls of {len(subset)} cases per pass")
                choices = await measure_choices(engine, subset, batch=cfg.batch)
        finally:
            await engine.close()
        if "choices" in cfg.phases and cfg.system.planner.decoding == "schema":
            choices.insert(1, await measure_without_prefix_cache(cfg.system.planner.vllm, subset))
        return planner, choices

    planner, choices = asyncio.run(engine_work())
    if "choices" in cfg.phases:
        result.choices = choices
    result.floor_calls = len(planner)
    result.floor_same_outputs = sum(c.same_output for c in planner.values())
    for case_id, trace in traces.items():
        end = case_end(trace)
        if end is None:
            continue
        latency = (end - trace.case.received_at).total_seconds() * 1000
        result.floor.append(case_floor(case_id, case_level[case_id], latency, end, requests.get(case_id, []),
                                       planner, tools.get(case_id, [])))


def peer_phase(cfg: BenchConfig, instances: list[Instance], reference: GoldReference, work: Path,
               result: BenchResult, log) -> None:
    """Phase 3: the LangGraph peers on the same instances, at `peer_levels`: ReAct per tool choice,
    then the structured-output graph (all in one event loop: the OpenAI client keeps its
    connections on the loop that opened them)."""
    from opsagent.tools.platform.launcher import Platform

    def make(kind: PeerKind, choice: str, base_url: str, registry: ToolRegistry) -> ChatPeer:
        limits = {"max_tokens": cfg.system.planner.max_tokens, "max_steps": cfg.system.max_steps}
        if kind == "structured":
            return StructuredPeer(base_url, registry, **limits)
        return Peer(base_url, registry, tool_choice=choice, **limits)

    runs = [("react", c) for c in cfg.peer_tool_choices if "react" in cfg.peer_kinds]
    runs += [("structured", "json_schema")] if "structured" in cfg.peer_kinds else []

    async def levels(server: VllmServer) -> None:
        for kind, choice in runs:
            for level in cfg.peer_levels:
                insts = level_instances(instances, cfg.cases_per_level.get(level, level))
                with Platform(background=cfg.background) as platform:
                    plant(insts, platform)
                    peer = make(kind, choice, server.base_url, platform.registry())
                    results, wall = await peer.closed_loop(insts, level, key=f"peer-{choice}-{level}")
                    snaps = snapshots(platform)
                rows = []
                for (case, box), inst in zip(results, insts, strict=True):
                    s = score(inst, box.run(inst.instance_id), snaps, reference[inst.instance_id])
                    rows.append(case.model_copy(update={"score": s.score}))
                result.peer.append(PeerLevel(
                    kind=kind, tool_choice=choice, concurrency=level, cases=len(rows), wall_s=wall,
                    cases_per_s=throughput(len(rows), wall), latency=Summary.of([r.latency_s for r in rows]),
                    correct=sum(r.score == 1.0 for r in rows), finished=sum(r.outcome is not None for r in rows),
                    rows=rows))
                p = result.peer[-1]
                errors = sorted({r.error for r in rows if r.error})
                log(f"peer {p.label} level {level}: {p.cases_per_s or 0:.3f} cases/s, p50 {p.latency.p50 or 0:.2f} s, "
                    f"{p.correct}/{p.cases} correct, {p.finished} finished; errors: {errors[:3]}")

    engine = cfg.system.planner.vllm  # the peers' server runs the model as opsagent's engine does
    with VllmServer(work / "peer", model=engine.model, max_model_len=engine.max_model_len,
                    dtype=engine.dtype, kv_cache_gib=engine.kv_cache_gib,
                    block_size=engine.block_size) as server:
        log(f"vllm serve ready on {server.base_url}")
        asyncio.run(levels(server))


def run_bench(cfg: BenchConfig, instances: list[Instance], *, command: str, work: Path | None = None,
              log=print, resume: BenchResult | None = None, progress=None) -> BenchResult:
    """Run the configured phases; the caller holds the engine lock. With `resume` (the result a
    run with `work` left in `work/result.json`), the system phase is not run again: the floor,
    choices and peer phases use that run's traces and recording, and replace its figures."""
    if not instances:
        raise InputError("the eval set is empty")
    for level in cfg.levels:
        level_instances(instances, cfg.cases_per_level[level])  # fail fast on a set too small
    started, t0 = datetime.now(UTC), time.monotonic()
    result = BenchResult(started_at=started, command=command, instances=len(instances),
                         classes=sorted({i.exception_type for i in instances}))
    if resume is not None:
        if work is None:
            raise InputError("resuming needs the earlier run's work folder")
        again: dict = {"command": f"{resume.command}\n{command}", "notes": [
            *resume.notes, f"{', '.join(p for p in cfg.phases if p != 'system')} measured again at "
            f"{started:%Y-%m-%d %H:%M} UTC on the traces of the run above"]}
        if "floor" in cfg.phases:
            again |= {"floor": [], "floor_calls": 0, "floor_same_outputs": 0}
        if "choices" in cfg.phases:
            again["choices"] = []
        if "peer" in cfg.phases:
            again["peer"] = []
        result = resume.model_copy(update=again)
    with tempfile.TemporaryDirectory(prefix="opsagent-bench-") as scratch:
        work = work or Path(scratch)
        if resume is None:
            result.export_ms = export_latency_ms(work / "export-probe")
        reference = GoldReference.build(instances)
        from opsagent.cluster.runtime import private_tmpdir

        with private_tmpdir():
            phase = _SystemPhase(cfg, instances, work, reference, result, log, progress)
            if "system" in cfg.phases and resume is None:
                _guard("system", phase.run, result, log)
            if result.runs and ("floor" in cfg.phases or "choices" in cfg.phases):
                _guard("floor", lambda: floor_phase(cfg, phase, instances, result, log), result, log)
            if "peer" in cfg.phases:
                _guard("peer", lambda: peer_phase(cfg, instances, reference, work, result, log), result, log)
        result.wall_s = time.monotonic() - t0
        (work / "result.json").write_text(result.model_dump_json(indent=1))
    return result


def _guard(name: str, work, result: BenchResult, log) -> None:
    """Run one phase; a failure is noted in the result (what was measured before it is kept)."""
    try:
        work()
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        result.notes.append(f"phase {name} done; load average (1, 5, 15 min) at its end: {load} on 2 cores")
    except Exception as exc:  # the other phases' figures are still worth reporting
        import traceback

        log(traceback.format_exc())
        result.notes.append(f"phase {name} failed: {type(exc).__name__}: {str(exc)[:300]}")
