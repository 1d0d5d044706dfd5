"""What the ops team did on an instance: mostly the gold, sometimes the ways people differ.

The log is seeded by the instance id, so it is the same every time the instance is made. About
four in five logs follow the gold (in their own words); the rest show one deviation:

- `extra_read`: looked something up the gold does not need;
- `skipped_read`: acted without one of the required reads;
- `over_escalated`: handed a resolvable case to a team instead of resolving it;
- `other_team`: escalated, but to a different team than the class's;
- `ticket_left_open`: did the fix but never closed the ticket (outcome unknown).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from opsagent.evals.catalogue._model import GoldAction, HumanAction, HumanLog, Instance

ACTORS = ["marta.k", "jonas.b", "aylin.d", "piotr.w", "sven.h", "lea.m"]
_TEAMS = ["finance", "customer_service", "warehouse_ops", "carrier_relations", "customs"]
_FREE_TEXT = ("reason", "note", "resolution")
_WORDING = ["done", "fixed, see history", "checked both systems, sorted", "handled per SOP",
            "ok - done", "as discussed with the carrier"]
# (deviation, probability) in the order they are tried; what is left follows the gold.
_DEVIATIONS = [("extra_read", 0.07), ("skipped_read", 0.05), ("over_escalated", 0.06),
               ("other_team", 0.05), ("ticket_left_open", 0.03)]


def human_log(inst: Instance) -> HumanLog:
    """The ops team's handling of `inst`."""
    rng = random.Random(f"human:{inst.instance_id}")
    actions, outcome = list(inst.gold.actions), inst.gold.outcome
    deviation = _pick(rng, inst)
    ticket = inst.entities.get("ticket_id")
    reads = [a for a in actions if not a.writes]
    if deviation == "extra_read":
        extra = (GoldAction(tool="tkt_get_ticket", args={"ticket_id": ticket}, key_args=["ticket_id"],
                            writes=False, risk="low")
                 if ticket and all(a.tool != "tkt_get_ticket" for a in actions) else reads[0])
        actions.insert(0, extra)
    elif deviation == "skipped_read":
        actions.remove(rng.choice(reads))
    elif deviation == "over_escalated":
        team = inst.gold.team or rng.choice(_TEAMS)
        handover = GoldAction(tool="tkt_assign_ticket", writes=True, risk="low",
                              key_args=["ticket_id", "team"],
                              args={"ticket_id": ticket, "team": team, "note": "not sure, pls check"})
        actions = [*reads, *([handover] if ticket else [])]
        outcome = "escalated"
    elif deviation == "other_team":
        team = rng.choice([t for t in _TEAMS if t != inst.gold.team])
        actions = [a.model_copy(update={"args": {**a.args, "team": team}})
                   if a.tool == "tkt_assign_ticket" else a for a in actions]
    elif deviation == "ticket_left_open":
        actions = [a for a in actions if a.tool != "tkt_resolve_ticket"]
        outcome = None
    actor = rng.choice(ACTORS)
    t = datetime.fromisoformat(_reported(inst)) + timedelta(minutes=rng.randint(5, 240))
    start, logged = t, []
    for a in actions:
        t += timedelta(minutes=rng.randint(1, 6))
        args = {k: (rng.choice(_WORDING) if k in _FREE_TEXT else v) for k, v in a.args.items()}
        logged.append(HumanAction(tool=a.tool, args=args, at=t.isoformat()))
    return HumanLog(actor=actor, outcome=outcome, actions=logged, deviation=deviation,
                    minutes=max(1, int((t - start).total_seconds() // 60)))


def _pick(rng: random.Random, inst: Instance) -> str | None:
    ticketed = "ticket_id" in inst.entities
    applies = {
        "extra_read": True,
        "skipped_read": len([a for a in inst.gold.actions if not a.writes]) > 1,
        "over_escalated": inst.gold.outcome == "resolved",
        "other_team": inst.gold.outcome == "escalated" and ticketed,
        "ticket_left_open": inst.gold.outcome == "resolved" and ticketed,
    }
    r = rng.random()
    for name, p in _DEVIATIONS:
        if r < p:
            return name if applies[name] else None
        r -= p
    return None


def _reported(inst: Instance) -> str:
    """When the exception was reported: the ticket's creation time, else a day after the parcel
    was scanned (weight mismatches come from the carrier's invoice run)."""
    for w in inst.setup:
        if w.system == "tkt" and w.route == "tickets":
            return w.records[0]["created_at"]
    scans = [r["scanned_at"] for w in inst.setup for r in w.records if "scanned_at" in r]
    return (datetime.fromisoformat(max(scans)) + timedelta(days=1)).isoformat()
