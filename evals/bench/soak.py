"""`opsagent bench load`: a steady-rate soak of the whole system on the local Ray runtime.

Plants N weight mismatches in a fresh sandbox platform, starts one `OpsAgentSystem` and its Serve
front door, submits the cases over `POST /v1/exceptions` at a steady rate (a refused submission,
429 or 503, is sent again after its Retry-After and counted), follows them over `GET /v1/cases`,
and samples every actor's resident memory (psutil on the actor's process) and the executor
pool's size while it runs. Reports throughput, p50/p95 latency (receipt to final status, as the
case records them), memory per actor over time, the pool's size over time (`--autoscale MIN:MAX`
sizes it with the load), lost cases (accepted but not final at the end: must be 0), writes the
systems of record applied twice (must be 0) and the ledger against the executed actions.
`--state URL` runs it on that state database (e.g. PostgreSQL) instead of a fresh SQLite file.

`--engine scripted` (default) plans with a scripted gold planner, so the figures are the system's
own (Ray, policy, executors, traces, case store), not the model's; `--engine vllm` uses the
embedded model (run it alone, under `flock /tmp/engine.lock`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import func, select

from opsagent.agents.engines.base import ChoiceRequest, ChoiceResult, GenerationRequest, GenerationResult
from opsagent.agents.engines.scripted import ScriptedEngine
from opsagent.agents.playbooks.model import builtin_playbooks
from opsagent.cluster.api.request_limits import ApiLimits
from opsagent.cluster.case_store import CaseStore
from opsagent.cluster.config import ExecutorAutoscalingConfig, SystemConfig
from opsagent.cluster.executor_scaling import ScalingEvent
from opsagent.cluster.probes import PoolSample, PoolWatch, actor_pids, set_mode
from opsagent.cluster.runtime import private_tmpdir, start_ray, stop_ray
from opsagent.cluster.system import OpsAgentSystem
from opsagent.errors import InputError
from opsagent.evals.gold import gold_step
from opsagent.policy.config import PolicyConfig, load_default_policy
from opsagent.policy.credentials import Credential
from opsagent.policy.identity import TokenStore
from opsagent.policy.state import open_state
from opsagent.policy.state._schema import ledger
from opsagent.progress import CaseProgress, progress_wanted
from opsagent.tools.platform import Platform, inject_weight_mismatch

FINAL = {"resolved", "escalated", "failed", "proposed"}
BENCH_ADMIN = "bench-admin"  # the admin that puts the class in autonomous mode (a token of its own)


class GoldScriptedEngine(ScriptedEngine):
    """A scripted engine that never runs out: every call is answered by `respond` (the gold
    planner by default) and nothing is kept per call, so a soak measures the system, not the
    script's history."""

    def __init__(self, respond: Callable[[GenerationRequest], Any] = gold_step) -> None:
        super().__init__([], model="scripted-gold")
        self._respond = respond

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if not self.fills(request):
            self._script.append(self._respond)
        try:
            return await super().generate(request)
        finally:
            self.requests.clear()
            self.outputs.clear()

    async def choose(self, request: ChoiceRequest) -> ChoiceResult:
        self._script.append(self._respond)
        try:
            return await super().choose(request)
        finally:
            self.requests.clear()
            self.outputs.clear()


class ActorMemory(BaseModel):
    """Resident memory of one actor's process over the run, in MB."""

    actor: str
    first_mb: float = Field(description="At the first sample after the warm-up tenth of the run.")
    mid_mb: float = Field(description="At the middle sample of the settled run.")
    peak_mb: float
    last_mb: float
    samples: int

    @property
    def growth_pct(self) -> float:
        return 100.0 * (self.last_mb - self.first_mb) / self.first_mb if self.first_mb else 0.0

    @property
    def late_growth_pct(self) -> float:
        """Growth over the second half of the settled run: near 0 once memory has levelled off."""
        return 100.0 * (self.last_mb - self.mid_mb) / self.mid_mb if self.mid_mb else 0.0


class LoadResult(BaseModel):
    """What one soak measured."""

    cases: int
    rate: float = Field(description="Target submissions per second.")
    engine: str
    executors: int = Field(description="Executors the system started (the floor when autoscaled).")
    autoscale: str | None = Field(None, description="MIN:MAX of an autoscaled executor pool.")
    planner_replicas: int
    accepted: int
    refused: int = Field(description="Submissions answered 429/503 and sent again.")
    final: dict[str, int] = Field(description="Cases per final status.")
    lost: int = Field(description="Accepted cases not final (or not found) at the end.")
    unexpected: int = Field(description="Final cases whose status is not the planted gold outcome.")
    duration_s: float = Field(description="First submission to the last case final.")
    throughput: float = Field(description="Cases finished per second over duration_s.")
    p50_s: float
    p95_s: float
    max_s: float
    memory: list[ActorMemory]
    pool: list[PoolSample] = Field(default_factory=list, description="The executor pool over the run.")
    scaling: list[ScalingEvent] = Field(default_factory=list, description="The pool's last size changes.")
    max_open: int = Field(description="Most cases open at once (seen by the poller).")
    case_ids: list[str] = Field(default_factory=list, exclude=True, description="The accepted cases.")
    state: str = Field("sqlite", description="The state database's backend (sqlite or postgresql).")
    duplicate_effects: int = Field(0, description="Writes the systems of record applied more than once "
                                   "(a second weight dispute for one shipment, a repeated idempotency key).")
    executed_actions: int = Field(0, description="Tool calls the run's cases executed (ran, or may have).")
    ledger_committed: int = Field(0, description="The run's ledger rows committed (counted for good).")
    ledger_open: int = Field(0, description="The run's ledger rows still reserved, neither committed nor released.")
    ledger_spend: float = Field(0.0, description="Spend the ledger counts for the run's cases.")
    executed_spend: float = Field(0.0, description="Sum of the amounts of the executed actions that move money.")
    when: datetime


def policy_with_rate(calls_per_minute: int | None) -> PolicyConfig:
    """The shipped policy, its cluster-wide call rate limit replaced if one is given (the shipped
    600 calls a minute is about 3 weight mismatches a second: beyond, reads are denied)."""
    policy = load_default_policy()
    if calls_per_minute is None:
        return policy
    return policy.model_copy(update={"limits": policy.limits.model_copy(
        update={"calls_per_minute": calls_per_minute})})


def run_load(args: argparse.Namespace) -> int:
    """Run the soak; print the figures; 0 if no case was lost, 1 otherwise (InputError on bad input)."""
    if args.calls_per_minute is not None and args.calls_per_minute < 1:
        raise InputError("bench load: --calls-per-minute must be positive")
    if args.cases < 1 or args.rate <= 0 or args.executors < 1 or args.planner_replicas < 1:
        raise InputError("bench load: --cases, --rate, --executors and --planner-replicas must be positive")
    if args.case_cache is not None and args.case_cache < 1:
        raise InputError(f"bench load: --case-cache must be >= 1, got {args.case_cache}")
    if not 0 <= args.suspect_share <= 1:
        raise InputError("bench load: --suspect-share must be between 0 and 1")
    args.scaling = autoscaling(args.autoscale)
    with private_tmpdir(), tempfile.TemporaryDirectory(prefix="oa-load-") as work:
        result = _soak(args, Path(work))
    text = format_load(result, args)
    print(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        with args.report.open("a") as out:
            out.write(("\n" if args.report.stat().st_size else "# Benchmarks\n\n") + text + "\n")
    return 0 if result.lost == 0 and result.duplicate_effects == 0 else 1


def autoscaling(spec: str | None) -> ExecutorAutoscalingConfig | None:
    """`--autoscale MIN:MAX` as the pool's autoscaling config (other settings: the defaults)."""
    if spec is None:
        return None
    low, sep, high = spec.partition(":")
    try:
        if not sep:
            raise ValueError("no colon")
        return ExecutorAutoscalingConfig(min_executors=int(low), max_executors=int(high))
    except (ValueError, ValidationError) as exc:
        detail = "; ".join(e["msg"] for e in exc.errors()) if isinstance(exc, ValidationError) else ""
        raise InputError(f"bench load: --autoscale takes MIN:MAX executors (1 <= MIN <= MAX <= 64), "
                         f"got {spec!r}{': ' + detail if detail else ''}") from exc


def _soak(args: argparse.Namespace, work: Path) -> LoadResult:
    start_ray(num_cpus=os.cpu_count() or 2)
    try:
        with Platform(work / "platform", background=10) as platform:
            instances = inject_weight_mismatch(platform, count=args.cases, seed=args.seed,
                                               suspect_share=args.suspect_share)
            config = SystemConfig(traces_dir=work / "traces", state_dir=work / "state",
                                  state=getattr(args, "state", None),
                                  executors=args.executors, executor_autoscaling=args.scaling,
                                  max_open_cases=max(1000, args.cases),
                                  **({"case_cache": args.case_cache} if args.case_cache else {}))
            config.planner.replicas = args.planner_replicas
            engine = GoldScriptedEngine() if args.engine == "scripted" else None
            system = OpsAgentSystem(config, platform.registry(), engine=engine,
                                    playbooks={"weight_mismatch": builtin_playbooks()["weight_mismatch"]},
                                    policy=policy_with_rate(args.calls_per_minute))
            system.start()
            try:
                admin = Credential.of(TokenStore(system.tokens_path).add(BENCH_ADMIN, ["admin"]))
                set_mode(system, "weight_mismatch", "autonomous", admin, "bench load: writes really run")
                url = system.serve(port=0, limits=ApiLimits(requests_per_window=10 ** 7))
                token = TokenStore(system.tokens_path).add("bench", ["submitter"])
                result = asyncio.run(_drive(args, url, token, instances, actor_pids(system),
                                            system.handles["cases"]))
                return result.model_copy(update=audit(platform, system.tokens_path, result.case_ids))
            finally:
                system.stop()
    finally:
        stop_ray()


async def _drive(args: argparse.Namespace, url: str, token: str, instances: list[Any],
                 pids: dict[str, int], cases: Any) -> LoadResult:
    headers = {"Authorization": f"Bearer {token}"}
    accepted: dict[str, float] = {}
    refused = 0
    seen: dict[str, dict] = {}
    memory: list[tuple[float, dict[str, float]]] = []
    pool: list[PoolSample] = []
    max_open = 0
    bar = CaseProgress(len(instances), "bench load", enabled=progress_wanted(getattr(args, "no_progress", False)))
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        async def submit(inst: Any) -> None:
            nonlocal refused
            body = {"exception_type": inst.exception_type, "description": inst.description,
                    "entities": inst.entities}
            while True:
                r = await client.post("/v1/exceptions", json=body,
                                      headers={"Idempotency-Key": inst.entities["shipment_id"]})
                if r.status_code in (429, 503):
                    refused += 1
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                    continue
                r.raise_for_status()
                accepted[r.json()["case_id"]] = time.monotonic()
                return

        async def poll() -> None:
            nonlocal max_open
            offset: int | None = 0
            while offset is not None:
                page = (await client.get("/v1/cases", params={"offset": offset, "limit": 200})).json()
                for item in page["items"]:
                    seen[item["case_id"]] = item
                offset = page.get("next_offset")
            max_open = max(max_open, sum(1 for v in seen.values() if v["status"] not in FINAL))
            bar.show({cid: seen.get(cid, {}).get("status", "received") for cid in accepted}, FINAL.__contains__)

        t0 = time.monotonic()
        tasks = []
        sampler = asyncio.create_task(_sample_memory(pids, memory, t0, PoolWatch(cases, pids, pool)))
        for i, inst in enumerate(instances):
            await asyncio.sleep(max(0.0, t0 + i / args.rate - time.monotonic()))
            tasks.append(asyncio.create_task(submit(inst)))
            if i % max(1, int(args.rate)) == 0:
                await poll()
        await asyncio.gather(*tasks)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            await poll()
            if all(seen.get(cid, {}).get("status") in FINAL for cid in accepted):
                break
            await asyncio.sleep(1.0)
        sampler.cancel()
        bar.close()
        scaling = (await cases.executor_pool.remote()).decisions
    done = [seen[c] for c in accepted if seen.get(c, {}).get("status") in FINAL]
    latencies = sorted(_latency(v) for v in done)
    first = min(datetime.fromisoformat(v["received_at"]) for v in done) if done else None
    last = max(datetime.fromisoformat(v["finished_at"]) for v in done) if done else None
    duration = (last - first).total_seconds() if first and last else 0.0
    expected = {inst.entities["shipment_id"]: inst.expected_status for inst in instances}
    unexpected = sum(1 for v in done if v["status"] != expected.get(v["entities"].get("shipment_id")))
    final: dict[str, int] = {}
    for v in done:
        final[v["status"]] = final.get(v["status"], 0) + 1
    return LoadResult(
        cases=args.cases, rate=args.rate, engine=args.engine,
        executors=args.scaling.min_executors if args.scaling else args.executors, autoscale=args.autoscale,
        planner_replicas=args.planner_replicas, accepted=len(accepted), refused=refused,
        final=final, lost=len(accepted) - len(done), unexpected=unexpected, duration_s=round(duration, 1),
        throughput=round(len(done) / duration, 2) if duration else 0.0,
        p50_s=_pct(latencies, 50), p95_s=_pct(latencies, 95),
        max_s=round(latencies[-1], 3) if latencies else 0.0,
        memory=_memory_table(memory), pool=pool, scaling=scaling, max_open=max_open,
        case_ids=list(accepted), when=datetime.now().astimezone())


def audit(platform: Platform, state: str, case_ids: list[str]) -> dict[str, Any]:
    """After the run: writes applied twice in the systems of record, and the ledger against the
    actions the run's cases executed (read from the state database)."""
    snapshot = platform.snapshot("tms")
    disputes: dict[str, int] = {}
    for row in snapshot["weight_disputes"]:
        disputes[row["shipment_id"]] = disputes.get(row["shipment_id"], 0) + 1
    keys = [r["key"] for r in snapshot["idempotency_keys"]]
    duplicates = sum(n - 1 for n in disputes.values() if n > 1) + len(keys) - len(set(keys))
    db = open_state(state)
    store = CaseStore(db)
    executed, spend = 0, 0.0
    for case_id in case_ids:
        stored = store.get(case_id)
        for step in stored.case.steps if stored else []:
            if step.executed:
                executed += 1
                amount = step.args.get("amount")
                spend += float(amount) if isinstance(amount, int | float) else 0.0
    rows: dict[str, int] = {}
    total = 0
    with db.read() as conn:
        for chunk in range(0, len(case_ids), 500):
            ids = case_ids[chunk:chunk + 500]
            for state_, n, micro in conn.execute(
                    select(ledger.c.state, func.count(), func.coalesce(func.sum(ledger.c.amount_micro), 0))
                    .where(ledger.c.case_id.in_(ids)).group_by(ledger.c.state)):
                rows[state_] = rows.get(state_, 0) + int(n)
                total += int(micro) if state_ != "released" else 0
    return {"state": db.dialect, "duplicate_effects": duplicates, "executed_actions": executed,
            "ledger_committed": rows.get("committed", 0), "ledger_open": rows.get("reserved", 0),
            "ledger_spend": total / 1_000_000, "executed_spend": round(spend, 6)}


async def _sample_memory(pids: dict[str, int], out: list[tuple[float, dict[str, float]]],
                         t0: float, pool: PoolWatch | None = None, every_s: float = 2.0) -> None:
    procs = {name: psutil.Process(pid) for name, pid in pids.items()}
    while True:
        if pool is not None:
            try:
                for name, pid in (await pool.sample(time.monotonic() - t0)).items():
                    procs[name] = psutil.Process(pid)
            except psutil.Error:  # a gone pid
                pass
        sample = {}
        for name, proc in procs.items():
            try:
                sample[name] = proc.memory_info().rss / 2 ** 20
            except psutil.Error:  # the actor died (restarted elsewhere): not sampled any more
                continue
        out.append((time.monotonic() - t0, sample))
        await asyncio.sleep(every_s)


def _memory_table(series: list[tuple[float, dict[str, float]]]) -> list[ActorMemory]:
    if not series:
        return []
    settled = series[len(series) // 10:] or series  # skip the warm-up tenth
    names = sorted({n for _, s in settled for n in s})
    table = []
    for name in names:
        values = [s[name] for _, s in settled if name in s]
        table.append(ActorMemory(actor=name, first_mb=round(values[0], 1),
                                 mid_mb=round(values[len(values) // 2], 1), peak_mb=round(max(values), 1),
                                 last_mb=round(values[-1], 1), samples=len(values)))
    return table


def _latency(view: dict) -> float:
    return (datetime.fromisoformat(view["finished_at"])
            - datetime.fromisoformat(view["received_at"])).total_seconds()


def _pct(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return round(values[0], 3)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 3)


def format_load(result: LoadResult, args: argparse.Namespace) -> str:
    """The markdown section of one soak."""
    pool = f"--autoscale {result.autoscale}" if result.autoscale else f"--executors {result.executors}"
    command = (f"opsagent bench load --cases {result.cases} --rate {result.rate:g} --engine {result.engine} "
               f"{pool} --planner-replicas {result.planner_replicas}")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(result.final.items()))
    lines = [
        f"## Load: {result.cases} cases at {result.rate:g}/s ({result.engine} planner)",
        "",
        f"`{command}` — {result.when:%Y-%m-%d %H:%M %Z}, local Ray runtime on {os.cpu_count()} cores, "
        "Serve front door, sandbox platform in the driver process.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| accepted / refused (429/503, resent) | {result.accepted} / {result.refused} |",
        f"| final statuses | {statuses} |",
        f"| lost cases | {result.lost} |",
        f"| final status other than the planted gold outcome | {result.unexpected} |",
        f"| duration (first receipt to last final) | {result.duration_s} s |",
        f"| throughput | {result.throughput} cases/s |",
        f"| latency p50 / p95 / max (receipt to final) | {result.p50_s} / {result.p95_s} / {result.max_s} s |",
        f"| most cases open at once | {result.max_open} |",
        f"| state database | {result.state} |",
        f"| writes applied twice (systems of record) | {result.duplicate_effects} |",
        f"| executed actions / ledger rows committed (still reserved) | {result.executed_actions} / "
        f"{result.ledger_committed} ({result.ledger_open}) |",
        f"| spend: executed actions / ledger | {result.executed_spend:g} / {result.ledger_spend:g} |",
        "",
        "| actor | RSS first (MB) | middle | peak | last | growth | growth, 2nd half | samples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {m.actor} | {m.first_mb} | {m.mid_mb} | {m.peak_mb} | {m.last_mb} | {m.growth_pct:+.1f}% "
              f"| {m.late_growth_pct:+.1f}% | {m.samples} |" for m in result.memory]
    if result.autoscale:
        lines += ["", *_pool_lines(result)]
    return "\n".join(lines) + "\n"


def _pool_lines(result: LoadResult) -> list[str]:
    """The pool's size over the run: the first sample, every change of size, the last one."""
    kept = [p for i, p in enumerate(result.pool)
            if i in (0, len(result.pool) - 1) or p.executors != result.pool[i - 1].executors]
    sizes = [p.executors for p in result.pool]
    flying = [p.in_flight for p in result.pool]
    lines = [f"Executor pool, autoscaled {result.autoscale}: {min(sizes, default=0)} to "
             f"{max(sizes, default=0)} executors; tool calls in flight at the samples: peak "
             f"{max(flying, default=0)}, mean {statistics.fmean(flying) if flying else 0:.2f} "
             "(sampled every 2 s; the rows: first, last and every change of size).",
             "", "| t (s) | executors | tool calls in flight |", "|---|---|---|"]
    lines += [f"| {p.t_s} | {p.executors} | {p.in_flight} |" for p in kept]
    if result.scaling:
        lines += ["", "| decided at | from | to | wanted | why |", "|---|---|---|---|---|"]
        lines += [f"| {e.at:%H:%M:%S} | {e.from_size} | {e.to_size} | {e.desired} | {e.reason} |"
                  for e in result.scaling]
    return lines
