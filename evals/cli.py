"""`opsagent catalogue list | make`: the exception catalogue on the command line.

`cli.py` wires it in with `add_parser(subparsers)` and, for `args.command == "catalogue"`,
`run(args)`. Only argparse is imported here; the catalogue loads when a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `catalogue` with its `list` and `make` subcommands."""
    cat = subparsers.add_parser("catalogue", help="list the exception classes, or make a frozen eval set")
    sub = cat.add_subparsers(dest="catalogue_command", required=True)
    sub.add_parser("list", help="classes, systems touched, risk of their steps, share that should escalate")
    make = sub.add_parser("make", help="write N seeded instances per class as JSONL files")
    make.add_argument("--seed", type=int, required=True,
                      help="seed of the set; below 1,000,000 is held out, from 1,000,000 up is training")
    make.add_argument("--per-class", type=int, default=10, help="instances per class (default 10)")
    make.add_argument("--out", type=Path, required=True, help="folder to write the set into")
    make.add_argument("--classes", help="comma-separated class names (default: all)")
    return cat


def run(args: argparse.Namespace) -> int:
    """Run `catalogue list` or `catalogue make`; returns the exit code."""
    if args.catalogue_command == "list":
        print(list_table())
        return 0
    from opsagent.evals.evalset import make_eval_set, write_eval_set

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    instances = make_eval_set(args.seed, args.per_class, classes)
    manifest = write_eval_set(instances, args.out, seed=args.seed)
    escalated = sum(c["escalated"] for c in manifest["classes"].values())
    print(f"wrote {manifest['instances']} instances of {len(manifest['classes'])} classes "
          f"({escalated} to escalate, split: {manifest['split']}) to {args.out}")
    return 0


def list_table(sample: int = 40) -> str:
    """One row per class: systems, the gold's write steps with their risk, escalate and high-risk share."""
    from opsagent.agents.tracing.report import format_table
    from opsagent.evals.catalogue import CLASSES, make

    rows = []
    for name, cls in CLASSES.items():
        risks: dict[str, set[str]] = {}
        for inst in make(name, seed=0, count=sample):
            for a in inst.gold.actions:
                if a.writes and not a.tool.startswith("tkt_"):
                    risks.setdefault(a.tool, set()).add(a.risk)
        steps = ", ".join(f"{tool} ({'/'.join(sorted(r))})" for tool, r in sorted(risks.items()))
        rows.append((name, ",".join(cls.systems), steps, f"{cls.escalate_share:.0%}",
                     f"{cls.high_risk_share:.0%}"))
    table = format_table(["class", "systems", "write steps (risk)", "escalate", "high_risk"], rows)
    return (f"{table}\n\nClasses with a ticket also close it (tkt_resolve_ticket, low) or hand it to the "
            "class's human team (tkt_assign_ticket, low).\n"
            "escalate: share of instances whose correct outcome is escalation; "
            "high_risk: share with a step that needs approval.")
