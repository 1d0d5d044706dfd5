"""An eval run's outputs: results as Parquet beside the traces, a terminal summary, an HTML report.

Results go to `<traces>/eval_results/run=<run_id>/results.parquet` (one row per instance x trial
x configuration, the fields of `evals.metrics.CaseResult`) with `summary.json` (the run and its
metrics) beside it, so analysts read every run with DuckDB next to the traces:

    SELECT run, config, exception_type, avg(score) FROM read_parquet(
      'traces/eval_results/*/*.parquet', hive_partitioning = true) GROUP BY ALL;

The HTML report is one self-contained file: plain HTML and CSS with inline SVG charts (latency
distribution, accuracy and automation by class, the confusion of outcome against gold), no
script and nothing fetched.
"""

from __future__ import annotations

import html
import json
import types
import typing
from datetime import datetime
from pathlib import Path

import pyarrow as pa

from opsagent.agents.tracing.files import write_json, write_parquet
from opsagent.cli_output import format_table
from opsagent.evals.metrics import (
    AGENT_OUTCOMES, CaseResult, ConfigMetrics, EvalRun, GroupMetrics, format_rate, targets,
)
from opsagent.policy.config import load_default_policy
from opsagent.policy.modes import GateConfig
from opsagent.policy.stats import wilson

RESULTS = "eval_results"
COLOURS = ["#3b6ea8", "#e08a2c", "#4e9a5b", "#b8474f", "#7d5ba6", "#8c6d46"]


def results_dir(traces: Path, run_id: str) -> Path:
    return Path(traces) / RESULTS / f"run={run_id}"


def results_schema() -> pa.Schema:
    """The Parquet schema of the result rows, from `CaseResult`'s fields."""
    simple = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_(),
              datetime: pa.timestamp("us", tz="UTC")}
    fields = []
    for name, info in CaseResult.model_fields.items():
        kind = info.annotation
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if typing.get_origin(kind) is list:
            fields.append(pa.field(name, pa.list_(simple[typing.get_args(kind)[0]])))
        else:
            fields.append(pa.field(name, simple[kind]))
    return pa.schema(fields)


def write_results(run: EvalRun, metrics: dict[str, ConfigMetrics], traces: Path) -> Path:
    """Publish the rows as Parquet and the run's summary as JSON; returns the folder."""
    folder = results_dir(traces, run.run_id)
    table = pa.Table.from_pylist([r.model_dump() for r in run.rows], schema=results_schema())
    write_parquet(folder / "results.parquet", table)
    summary = run.model_dump(mode="json", exclude={"rows"})
    summary["metrics"] = {name: m.model_dump(mode="json") for name, m in metrics.items()}
    write_json(folder / "summary.json", summary)
    return folder


# ---- terminal -------------------------------------------------------------------------------

def terminal_summary(run: EvalRun, metrics: dict[str, ConfigMetrics]) -> str:
    """Per configuration a table by class with the overall row and the targets; with two or more
    configurations, the overall metrics side by side."""
    parts = [f"eval run {run.run_id}: {run.instances} instances of {len(run.classes)} classes x "
             f"{run.trials} trial(s) x {len(run.configs)} configuration(s), "
             f"concurrency {run.concurrency}, wall {run.wall_s:.0f} s"]
    for name, m in metrics.items():
        head = f"configuration {name} (planner {run.models.get(name) or '?'})"
        columns, rows = class_table(m)
        lines = [head, format_table(columns, rows), "", "targets (overall):"]
        for t in targets(m.overall):
            mark = "n/a " if t.met is None else "MET " if t.met else "MISS"
            lines.append(f"  [{mark}] {t.name}: {t.measured}   (goal {t.goal})")
        parts.append("\n".join(lines))
    if len(metrics) > 1:
        parts.append("side by side (overall)\n" + format_table(*compare_table(metrics)))
    return "\n\n".join(parts)


def class_table(m: ConfigMetrics) -> tuple[list[str], list[tuple]]:
    k = max(m.overall.pass_k, default=1)
    columns = ["class", "runs", "open", "accuracy", "automated", "auto_writes_ok", "esc_prec", "esc_recall",
               "human", "p50_s", "p95_s", "calls/case", "tok_in/case", "tok_out/case", f"pass^{k}",
               "unsup_high", "gate"]
    policy = load_default_policy()
    rows = [(*_class_row(name, g, k), eligibility(g, policy.gates_for(name))) for name, g in m.by_class.items()]
    rows.append((*_class_row("ALL", m.overall, k), ""))
    return columns, rows


def eligibility(g: GroupMetrics, gate: GateConfig) -> str:
    """Whether this run's accuracy would clear the class's promotion gate (the shipped policy's):
    at least `min_cases` cases and a Wilson lower bound of at least `threshold`."""
    n, hits = g.accuracy.n, g.accuracy.hits
    low = wilson(hits, n, gate.confidence)[0]
    if low < gate.threshold:
        return f"below: lower bound {low:.2f} < {gate.threshold:.2f}"
    if n < gate.min_cases:
        return f"on track: lower bound {low:.2f}, needs {gate.min_cases - n} more case(s)"
    return f"eligible: lower bound {low:.2f} >= {gate.threshold:.2f} over {n}"


def _class_row(name: str, g: GroupMetrics, k: int) -> tuple:
    return (name, g.rows, g.open, _pct(g.accuracy.value), _pct(g.automation.value),
            f"{g.autonomous_write_precision.hits}/{g.autonomous_write_precision.n}",
            _pct(g.escalation_precision.value), _pct(g.escalation_recall.value), _pct(g.needed_human.value),
            _num(g.latency_p50_s), _num(g.latency_p95_s), _num(g.planner_calls_per_case),
            _num(g.prompt_tokens_per_case, 0), _num(g.completion_tokens_per_case, 0),
            _pct(g.pass_k.get(k)), g.unsupervised_high_risk)


def compare_table(metrics: dict[str, ConfigMetrics]) -> tuple[list[str], list[tuple]]:
    names = list(metrics)
    overall = [metrics[n].overall for n in names]
    rows = [
        ("accuracy", *(format_rate(g.accuracy) for g in overall)),
        ("automation", *(format_rate(g.automation) for g in overall)),
        ("autonomous write precision", *(format_rate(g.autonomous_write_precision) for g in overall)),
        ("escalation precision", *(format_rate(g.escalation_precision) for g in overall)),
        ("escalation recall", *(format_rate(g.escalation_recall) for g in overall)),
        ("unsupervised high-risk", *(g.unsupervised_high_risk for g in overall)),
        ("approvals asked per case", *(_num(g.approvals_per_case) for g in overall)),
        ("latency p50 / p95 s", *(f"{_num(g.latency_p50_s)} / {_num(g.latency_p95_s)}" for g in overall)),
        ("planner calls per case", *(_num(g.planner_calls_per_case) for g in overall)),
        ("tokens in / out per case", *(f"{_num(g.prompt_tokens_per_case, 0)} / "
                                       f"{_num(g.completion_tokens_per_case, 0)}" for g in overall)),
    ]
    for k in sorted({k for g in overall for k in g.pass_k}):
        rows.append((f"pass^{k}", *(_pct(g.pass_k.get(k)) for g in overall)))
    return ["metric", *names], rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---- HTML -----------------------------------------------------------------------------------

def html_report(run: EvalRun, metrics: dict[str, ConfigMetrics]) -> str:
    """The whole report as one HTML document."""
    names = list(metrics)
    classes = sorted({c for m in metrics.values() for c in m.by_class})
    series = {}
    for n in names:
        series[f"{n}: accuracy"] = [metrics[n].by_class[c].accuracy.value if c in metrics[n].by_class
                                    else None for c in classes] + [metrics[n].overall.accuracy.value]
        series[f"{n}: automation"] = [metrics[n].by_class[c].automation.value if c in metrics[n].by_class
                                      else None for c in classes] + [metrics[n].overall.automation.value]
    latencies = {n: [r.latency_s for r in run.rows if r.config == n and r.latency_s is not None
                     and r.agent_outcome != "open"] for n in names}
    body = [
        f"<h1>opsagent eval {_e(run.run_id)}</h1>",
        "<p class=meta>" + _e(f"set {run.eval_set or '-'}; {run.instances} instances of "
                              f"{len(run.classes)} classes x {run.trials} trial(s); concurrency "
                              f"{run.concurrency}; started {run.started_at:%Y-%m-%d %H:%M:%S} UTC; "
                              f"wall {run.wall_s:.0f} s") + "</p>",
        "<p class=meta>" + "; ".join(_e(f"{n}: planner {run.models.get(n) or '?'}") for n in names) + "</p>",
        "<h2>Targets</h2>", _targets_table(metrics),
    ]
    if len(names) > 1:
        body += ["<h2>Side by side</h2>", _table(*compare_table(metrics))]
    body += ["<h2>Accuracy and automation by class</h2>",
             bar_chart([*classes, "ALL"], series),
             "<p class=note>accuracy: scored 1.0 against the gold (escalations and approved cases "
             "included); automation: resolved correctly with no approval asked, of every case (open ones, "
             "unfinished at the timeout, count as not automated).</p>",
             "<h2>Latency, receipt to last system-of-record update</h2>",
             histogram(latencies, unit="s"),
             "<h2>Outcome against gold</h2>"]
    for n in names:
        body += [f"<h3>{_e(n)}</h3>", _confusion(metrics[n].overall)]
    for n in names:
        body += [f"<h2>By class: {_e(n)}</h2>", _table(*class_table(metrics[n]))]
    failures = [r for r in run.rows if r.score < 1.0]
    if failures:
        body += ["<h2>Cases that did not score 1.0</h2>", _table(
            ["config", "trial", "instance", "variant", "status", "gold", "why", "case"],
            [(r.config, r.trial, r.instance_id, r.variant, r.status, r.gold_outcome, _why(r), r.case_id or "")
             for r in failures])]
    return _PAGE.format(title=_e(f"opsagent eval {run.run_id}"), body="\n".join(body))


def write_html(run: EvalRun, metrics: dict[str, ConfigMetrics], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_report(run, metrics))
    return path


def bar_chart(groups: list[str], series: dict[str, list[float | None]], *, width: int = 860,
              height: int = 300) -> str:
    """Grouped vertical bars of shares in [0, 1], one group per label, one bar per series."""
    left, bottom, top = 80, 70, 16
    plot_w, plot_h = width - left - 10, height - bottom - top
    slot = plot_w / max(len(groups), 1)
    bar = min(slot * 0.8 / max(len(series), 1), 28)
    out = [_svg_open(width, height + 20 * ((len(series) + 2) // 3))]
    for tick in range(0, 101, 25):
        y = top + plot_h * (1 - tick / 100)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" class=grid />'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}%</text>')
    for g, label in enumerate(groups):
        x0 = left + g * slot + (slot - bar * len(series)) / 2
        for s, values in enumerate(series.values()):
            value = values[g]
            if value is None:
                continue
            h = plot_h * value
            out.append(f'<rect x="{x0 + s * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar - 2:.1f}" '
                       f'height="{h:.1f}" fill="{COLOURS[s % len(COLOURS)]}"><title>{_e(label)} '
                       f'{_e(list(series)[s])}: {100 * value:.1f}%</title></rect>')
        cx = left + g * slot + slot / 2
        out.append(f'<text x="{cx:.1f}" y="{top + plot_h + 14}" text-anchor="end" '
                   f'transform="rotate(-25 {cx:.1f} {top + plot_h + 14})">{_e(label)}</text>')
    out.append(_legend(list(series), height))
    out.append("</svg>")
    return "".join(out)


def histogram(values: dict[str, list[float]], *, bins: int = 20, unit: str = "", width: int = 860,
              height: int = 260) -> str:
    """Counts of each series' values in `bins` equal bins from 0 to the largest value."""
    everything = [v for vs in values.values() for v in vs]
    if not everything:
        return "<p class=note>no finished case, no latency to show.</p>"
    hi = max(everything) or 1.0
    step = hi / bins
    counts = {n: [0] * bins for n in values}
    for n, vs in values.items():
        for v in vs:
            counts[n][min(int(v / step), bins - 1)] += 1
    peak = max(max(c) for c in counts.values()) or 1
    left, bottom, top = 44, 40, 16
    plot_w, plot_h = width - left - 10, height - bottom - top
    slot = plot_w / bins
    bar = slot * 0.9 / len(values)
    out = [_svg_open(width, height + 20 * ((len(values) + 2) // 3))]
    for tick in sorted({0, peak // 2, peak}):
        y = top + plot_h * (1 - tick / peak)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" class=grid />'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    for b in range(bins):
        for s, (n, c) in enumerate(counts.items()):
            if c[b]:
                h = plot_h * c[b] / peak
                out.append(f'<rect x="{left + b * slot + s * bar:.1f}" y="{top + plot_h - h:.1f}" '
                           f'width="{bar:.1f}" height="{h:.1f}" fill="{COLOURS[s % len(COLOURS)]}">'
                           f'<title>{_e(n)}: {c[b]} case(s) in {b * step:.1f}-{(b + 1) * step:.1f} {unit}'
                           f'</title></rect>')
    for b in range(0, bins + 1, max(bins // 5, 1)):
        x, anchor = left + b * slot, "end" if b == bins else "middle"
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="{anchor}">{b * step:.0f}{unit}</text>')
    out.append(_legend(list(values), height))
    out.append("</svg>")
    return "".join(out)


def _legend(names: list[str], y0: float) -> str:
    items = []
    for i, n in enumerate(names):
        x, y = 50 + (i % 3) * 270, y0 + 2 + 20 * (i // 3)
        items.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{COLOURS[i % len(COLOURS)]}" />'
                     f'<text x="{x + 18}" y="{y + 11}">{_e(n)}</text>')
    return "".join(items)


def _svg_open(width: int, height: int) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img">')


def _targets_table(metrics: dict[str, ConfigMetrics]) -> str:
    rows = []
    for n, m in metrics.items():
        for t in targets(m.overall):
            mark = "n/a" if t.met is None else "met" if t.met else "missed"
            rows.append(f"<tr><td>{_e(n)}</td><td>{_e(t.name)}</td><td>{_e(t.goal)}</td>"
                        f"<td>{_e(t.measured)}</td><td class={mark.replace('/', '')}>{mark}</td></tr>")
    return ("<table><tr><th>config</th><th>target</th><th>goal</th><th>measured</th><th></th></tr>"
            + "".join(rows) + "</table>")


def _confusion(g: GroupMetrics) -> str:
    head = "".join(f"<th>agent {_e(a)}</th>" for a in AGENT_OUTCOMES)
    rows = []
    for gold, counts in g.confusion.items():
        cells = []
        for a in AGENT_OUTCOMES:
            kind = "ok" if a == gold else "off" if counts.get(a) else "none"
            cells.append(f"<td class={kind}>{counts.get(a, 0)}</td>")
        rows.append(f"<tr><th>gold {_e(gold)}</th>{''.join(cells)}</tr>")
    return f"<table class=confusion><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _table(columns: list[str], rows: list[tuple]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<div class=wide><table><tr>{head}</tr>{body}</table></div>"


def _why(r: CaseResult) -> str:
    reasons = []
    if not r.outcome_ok:
        reasons.append(f"ended {r.status}" + (f" ({r.reason})" if r.reason else ""))
    if r.missing_actions:
        reasons.append("missing " + ", ".join(r.missing_actions))
    if not r.state_ok:
        reasons.append("end state differs")
    if r.failed_assertions:
        reasons.append("; ".join(r.failed_assertions))
    if r.error:
        reasons.append(r.error)
    return "; ".join(reasons)[:400]


def _e(value: object) -> str:
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    return html.escape("" if value is None else str(value))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.2em; margin-top: 1.8em; }}
.meta, .note {{ color: #555; }}
table {{ border-collapse: collapse; margin: .5em 0; font-variant-numeric: tabular-nums; font-size: 13px; }}
.wide {{ overflow-x: auto; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
th {{ background: #f2f2f2; }}
td.met, td.ok {{ background: #dff0d8; }} td.missed {{ background: #f2dede; }} td.off {{ color: #a33; }}
svg text {{ font-size: 11px; fill: #333; }} svg .grid {{ stroke: #e3e3e3; }}
</style></head>
<body>
{body}
</body></html>
"""
