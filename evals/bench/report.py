"""The benchmark as Markdown, and its section in docs/benchmarks.md (other sections are kept)."""

from __future__ import annotations

from pathlib import Path

from opsagent.evals.bench.breakdown import mean_parts
from opsagent.evals.bench.run import BenchResult, LevelResult, PeerLevel
from opsagent.evals.bench.stats import Summary, Target, percentile, ratio

HEADER = "# Benchmarks\n\nFigures measured on this repository's machines; each section names the command that produced it.\n"


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _level(result: BenchResult, c: int) -> LevelResult | None:
    return next((lv for lv in result.levels if lv.concurrency == c), None)


def targets(result: BenchResult, two_step_class: str) -> list[Target]:
    out = []
    for lv in result.levels:
        s = lv.by_class.get(two_step_class)
        out.append(Target(name=f"p50 of {two_step_class} at concurrency {lv.concurrency} (s)",
                          measured=s.p50 if s else None, limit=2.0, at_most=True))
    for c in sorted({f.concurrency for f in result.floor}):
        rows = [f for f in result.floor if f.concurrency == c]
        out.append(Target(name=f"end-to-end / floor at concurrency {c} (sum over cases)",
                          measured=ratio(sum(f.latency_ms for f in rows), sum(f.floor_ms for f in rows)),
                          limit=1.15, at_most=True))
    one, sixteen = _level(result, 1), _level(result, 16)
    if one and sixteen:
        out.append(Target(name="throughput at 16 / throughput at 1", limit=4.0, at_most=False,
                          measured=ratio(sixteen.cases_per_s, one.cases_per_s)))
    for p in result.peer:
        mine = _level(result, p.concurrency)
        if mine is None:
            continue
        out.append(Target(name=f"p50 latency / peer's ({p.label}) at concurrency {p.concurrency}",
                          measured=ratio(mine.latency.p50, p.latency.p50), limit=0.5, at_most=True))
        out.append(Target(name=f"throughput / peer's ({p.label}) at concurrency {p.concurrency}",
                          measured=ratio(mine.cases_per_s, p.cases_per_s), limit=2.0, at_most=False))
        if mine.cases and p.cases:
            out.append(Target(name=f"share correct − peer's ({p.label}) at concurrency {p.concurrency}",
                              measured=mine.correct / mine.cases - p.correct / p.cases, limit=0.0, at_most=False))
    return out


def render(result: BenchResult, *, title: str, two_step_class: str) -> str:
    parts = [f"## {title}", "",
             f"Run {result.started_at:%Y-%m-%d %H:%M} UTC, {result.wall_s / 60:.1f} min, model "
             f"{result.model or '-'}; {result.instances} instances of {', '.join(result.classes)}; "
             f"2 CPU cores. Trace export (WAL + fsync) measured at {_f(result.export_ms)} ms.", "",
             "```", result.command, "```", ""]
    parts += [f"- {n}" for n in result.notes] + ([""] if result.notes else [])
    if result.levels:
        one = _level(result, 1)
        parts += ["### opsagent: latency (receipt to last system-of-record update) and throughput", "",
                  _table(["concurrency", "cases", "p50 s", "p95 s", "p99 s", "cases/s", "× concurrency 1",
                          "correct", "statuses"],
                         [[str(lv.concurrency), str(lv.cases), _f(lv.latency.p50), _f(lv.latency.p95),
                           _f(lv.latency.p99), _f(lv.cases_per_s, 3),
                           _f(ratio(lv.cases_per_s, one.cases_per_s if one else None)),
                           f"{lv.correct}/{lv.cases}", ", ".join(f"{k} {v}" for k, v in sorted(lv.statuses.items()))]
                          for lv in result.levels]), ""]
        classes = sorted({k for lv in result.levels for k in lv.by_class})
        parts += ["p50 per class (s):", "",
                  _table(["concurrency", *classes],
                         [[str(lv.concurrency), *(_f(lv.by_class.get(c, Summary(n=0)).p50) for c in classes)]
                          for lv in result.levels]), ""]
        parts += ["### Where the time goes (mean per case, ms)", "",
                  "Prefill = call start to first token (includes waiting in vLLM's batch); trace writes = "
                  "exports awaited × the measured export latency (an estimate); queueing + Ray = the rest.", ""]
        rows = []
        for lv in result.levels:
            m = mean_parts(lv.breakdowns)
            if not m:
                continue
            n = len(lv.breakdowns)
            calls = sum(b.planner_calls for b in lv.breakdowns) / n
            prompt = sum(b.prompt_tokens for b in lv.breakdowns) / n
            cached = [b.cached_prompt_tokens for b in lv.breakdowns if b.cached_prompt_tokens is not None]
            out = sum(b.completion_tokens for b in lv.breakdowns) / n
            rows.append([str(lv.concurrency), _f(m["latency_ms"], 0), _f(m["prefill_ms"], 0), _f(m["decode_ms"], 0),
                         _f(m["unsplit_ms"], 0), _f(m["policy_ms"], 0), _f(m["tool_ms"], 0), _f(m["trace_ms"], 0),
                         _f(m["other_ms"], 0), _f(calls, 1), _f(prompt, 0),
                         _f(sum(cached) / len(cached), 0) if cached else "-", _f(out, 0)])
        parts += [_table(["concurrency", "latency", "planner prefill", "planner decode", "planner unsplit", "policy",
                          "executor/tool", "trace writes", "queueing + Ray", "planner calls", "prompt tok",
                          "of which cached", "output tok"], rows), ""]
    if result.floor:
        parts += ["### End-to-end over the floor", "",
                  f"Floor = the case's recorded planner requests re-issued one at a time to an in-process "
                  f"VllmEngine (prefix caching on, class prefixes warmed; max_tokens = recorded output) + its "
                  f"tool calls re-issued to a fresh platform. {result.floor_same_outputs}/{result.floor_calls} "
                  f"distinct requests reproduced the recorded output exactly.", ""]
        rows = []
        for c in sorted({f.concurrency for f in result.floor}):
            fl = [f for f in result.floor if f.concurrency == c]
            per = [f.over_floor for f in fl if f.over_floor is not None]
            rows.append([str(c), str(len(fl)), _f(sum(f.latency_ms for f in fl) / len(fl), 0),
                         _f(sum(f.planner_ms for f in fl) / len(fl), 0), _f(sum(f.tool_ms for f in fl) / len(fl), 0),
                         _f(percentile(per, 50)) if per else "-",
                         _f(ratio(sum(f.latency_ms for f in fl), sum(f.floor_ms for f in fl)))])
        parts += [_table(["concurrency", "cases", "mean latency ms", "mean floor: engine ms", "mean floor: tools ms",
                          "p50 of per-case ratio", "overall ratio"], rows), ""]
    if result.choices:
        parts += ["### Engine choices (the same recorded requests, in-process engine)", "",
                  _table(["choice", "requests", "mean ms/request", "mean prefill ms", "mean output tok",
                          "mean cached prompt tok", "schema-valid", "wall s", "how"],
                         [[c.name, str(c.requests), _f(c.mean_ms, 0), _f(c.mean_prefill_ms, 0),
                           _f(c.mean_completion_tokens, 1), _f(c.mean_cached_prompt_tokens, 0),
                           f"{c.valid}/{c.requests}" if c.valid is not None else "-", _f(c.wall_s, 1), c.note]
                          for c in result.choices]), ""]
    if result.peer:
        parts += _peer(result)
    ts = targets(result, two_step_class)
    if ts:
        parts += ["### Targets", "",
                  _table(["target", "measured", "limit", "met"],
                         [[t.name, _f(t.measured), ("≤ " if t.at_most else "≥ ") + _f(t.limit),
                           {True: "yes", False: "no", None: "not measured"}[t.met]] for t in ts]), ""]
    return "\n".join(parts).rstrip() + "\n"


def _peer(result: BenchResult) -> list[str]:
    rows = []
    for c in sorted({p.concurrency for p in result.peer}):  # opsagent once per level, then the peers
        mine = _level(result, c)
        if mine is not None:
            n = len(mine.breakdowns) or 1
            rows.append(["opsagent", "-", str(c), str(mine.cases), _f(mine.latency.p50), _f(mine.latency.p95),
                         _f(mine.cases_per_s, 3), _f(sum(b.prompt_tokens for b in mine.breakdowns) / n, 0),
                         _f(sum(b.completion_tokens for b in mine.breakdowns) / n, 0),
                         _f(sum(b.planner_calls for b in mine.breakdowns) / n, 1), f"{mine.correct}/{mine.cases}", "-"])
        rows += [_peer_row(p) for p in result.peer if p.concurrency == c]
    return ["### opsagent against the LangGraph peers (same cases, tools, model, machine, run)", "",
            "Tokens and model calls per case: opsagent's count up to the last system-of-record update; "
            "the peer's over its whole run. ReAct: LangGraph's prebuilt agent with the server's tool calling; "
            "structured: a LangGraph decide/act graph whose every model call is one step of the class "
            "(its tools' JSON schema as response_format), prompted with opsagent's playbook and examples.", "",
            _table(["system", "how the model calls tools", "concurrency", "cases", "p50 s", "p95 s", "cases/s",
                    "prompt tok/case", "output tok/case", "model calls/case", "correct", "ended by finish"], rows), ""]


def _peer_row(p: PeerLevel) -> list[str]:
    n = len(p.rows) or 1
    system, how = (("LangGraph ReAct", f"tool_choice {p.tool_choice}") if p.kind == "react"
                   else ("LangGraph structured", "response_format json_schema"))
    return [system, how, str(p.concurrency), str(p.cases), _f(p.latency.p50), _f(p.latency.p95),
            _f(p.cases_per_s, 3), _f(sum(r.prompt_tokens for r in p.rows) / n, 0),
            _f(sum(r.completion_tokens for r in p.rows) / n, 0), _f(sum(r.model_calls for r in p.rows) / n, 1),
            f"{p.correct}/{p.cases}", f"{p.finished}/{p.cases}"]


def write_section(path: Path, name: str, markdown: str) -> None:
    """Put `markdown` between this section's markers in `path` (created with a header if missing),
    replacing the section's previous text and keeping everything else."""
    begin, end = f"<!-- bench:{name} begin -->", f"<!-- bench:{name} end -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
