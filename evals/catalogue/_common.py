"""Shared pieces of the class generators: seeded plans and ids, tickets, gold actions, ops wording."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from opsagent.evals.catalogue._model import (
    ExceptionClass, Gold, GoldAction, Instance, Outcome, Planted, Risk, StateAssertion,
)
from opsagent.tools.platform.scenarios import AdminWrite, at, typo

FILLERS = [
    "", "", "", "Customer is one of our top accounts, pls prioritise.",
    "Copied from the customer service inbox.", "Marta is out this week so sending it to the queue.",
    "Not urgent but finance closes the month on Friday.",
    "Same thing happened last month.", "Can we get this sorted before the carrier review call?",
    "Second time this week...", "Thanks!", "Sorry if this is a duplicate ticket.", "cc Jonas",
]
SITES = ["DUS", "HAM", "LEJ"]


@dataclass
class Ids:
    """Fresh ids from the generator's random stream, never the same one twice in a set."""

    rng: random.Random
    used: set[str] = field(default_factory=set)

    def new(self, prefix: str, digits: int, lead: int = 1) -> str:
        while True:
            number = self.rng.randint(lead * 10 ** (digits - 1), (lead + 1) * 10 ** (digits - 1) - 1)
            ident = f"{prefix}-{number}"
            if ident not in self.used:
                self.used.add(ident)
                return ident

    def shipment(self) -> str:
        return self.new("SHP", 8, lead=3)

    def ticket(self) -> str:
        return self.new("TKT", 8, lead=2)

    def invoice(self) -> str:
        return self.new("INV", 8, lead=2)

    def customer(self) -> str:
        return self.new("CUST", 6, lead=3)

    def order(self) -> str:
        return self.new("SO", 8, lead=4)


@dataclass
class Draw:
    """What a class's builder gets for one instance: the random stream, ids, variant, report time."""

    rng: random.Random
    ids: Ids
    variant: str
    exception_type: str
    when: datetime

    def time(self, before_days: float, after_days: float = 0) -> str:
        """A time between `before_days` before and `after_days` after the report, to the minute."""
        lo, hi = int(-before_days * 24 * 60), int(after_days * 24 * 60)
        return (self.when + timedelta(minutes=self.rng.randint(lo, hi))).isoformat()


def plan(rng: random.Random, count: int, shares: dict[str, float]) -> list[str]:
    """`count` variant names in exact proportion to `shares` (largest remainder), shuffled."""
    total = sum(shares.values())
    raw = {k: count * s / total for k, s in shares.items()}
    counts = {k: int(x) for k, x in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - counts[k], reverse=True)[: count - sum(counts.values())]:
        counts[k] += 1
    seq = [k for k in shares for _ in range(counts[k])]
    rng.shuffle(seq)
    return seq


def make_standard(cls: ExceptionClass, seed: int, count: int, shares: dict[str, float]) -> list[Instance]:
    """Instances of a class whose `build` plants one instance from a `Draw`."""
    assert cls.build is not None
    rng = random.Random(f"{cls.name}:{seed}")
    ids = Ids(rng)
    out = []
    for index, variant in enumerate(plan(rng, count, shares)):
        planted = cls.build(Draw(rng, ids, variant, cls.name, at(rng, 45)))
        out.append(instance(cls, seed, index, variant, planted))
    return out


def instance(cls: ExceptionClass, seed: int, index: int, variant: str, planted: Planted) -> Instance:
    from opsagent.evals.catalogue._human import human_log

    inst = Instance(
        instance_id=f"{cls.name}-{seed}-{index:03d}", exception_type=cls.name, seed=seed, index=index,
        variant=variant, description=planted.description, entities=planted.entities,
        keys=[planted.entities[k] for k in cls.identifying], setup=planted.setup, gold=planted.gold,
        facts=planted.facts,
    )
    return inst.model_copy(update={"human": human_log(inst)})


def describe(rng: random.Random, templates: list[str], **fields: Any) -> str:
    """One of `templates` filled in, with an irrelevant remark and now and then a typo."""
    text = rng.choice(templates).format(filler=rng.choice(FILLERS), **fields)
    return typo(rng, " ".join(text.split()))


def ticket(d: Draw, ticket_id: str, description: str, entities: dict[str, str], *,
           claim_amount: float | None = None) -> AdminWrite:
    """The ticket ops filed in the exception queue for this instance."""
    created = d.when.isoformat()
    subject = description.split(". ")[0][:80]
    return AdminWrite(system="tkt", route="tickets", records=[{
        "ticket_id": ticket_id, "exception_type": d.exception_type, "subject": subject,
        "description": description, "entities": {k: v for k, v in entities.items() if k != "ticket_id"},
        "claim_amount": claim_amount, "currency": "EUR" if claim_amount is not None else None,
        "priority": d.rng.choice(["normal", "normal", "normal", "high", "low"]), "status": "open",
        "created_at": created, "updated_at": created}])


def events(shipment_id: str, start: datetime, steps: list[tuple[str, str, float, str]]) -> list[dict]:
    """Scan events of a parcel: (code, location, hours after the previous scan, detail)."""
    out, t = [], start
    for n, (code, location, hours, detail) in enumerate(steps, 1):
        t += timedelta(hours=hours)
        out.append({"event_id": f"{shipment_id}-E{n}", "shipment_id": shipment_id, "at": t.isoformat(),
                    "code": code, "location": location, "detail": detail})
    return out


def read(tool: str, *, ok: bool = True, **args: Any) -> GoldAction:
    """A required read; every argument is a key argument."""
    return GoldAction(tool=tool, args=args, key_args=list(args), writes=False, risk="low", expect_ok=ok)


def write(tool: str, args: dict[str, Any], keys: list[str], risk: Risk = "low") -> GoldAction:
    return GoldAction(tool=tool, args=args, key_args=keys, writes=True, risk=risk)


def resolve(ticket_id: str, resolution: str) -> GoldAction:
    return write("tkt_resolve_ticket", {"ticket_id": ticket_id, "resolution": resolution}, ["ticket_id"])


def escalate(ticket_id: str, team: str, note: str) -> GoldAction:
    return write("tkt_assign_ticket", {"ticket_id": ticket_id, "team": team, "note": note},
                 ["ticket_id", "team"])


def ticket_state(ticket_id: str, outcome: Outcome, team: str | None) -> StateAssertion:
    values = ({"status": "resolved", "team": None} if outcome == "resolved"
              else {"status": "assigned", "team": team})
    return StateAssertion(system="tkt", table="tickets", where={"ticket_id": ticket_id}, count=1,
                          values=values)


def ticketed_gold(*, outcome: Outcome, reads: list[GoldAction], act: list[GoldAction], ticket_id: str,
                  team: str, reason: str, assertions: list[StateAssertion]) -> Gold:
    """Reads, then either the action and closing the ticket, or handing the ticket to `team`."""
    if outcome == "resolved":
        actions = [*reads, *act, resolve(ticket_id, reason)]
    else:
        actions = [*reads, escalate(ticket_id, team, reason)]
    return Gold(outcome=outcome, actions=actions, team=team if outcome == "escalated" else None,
                reason=reason, assertions=[*assertions, ticket_state(ticket_id, outcome, team)])
