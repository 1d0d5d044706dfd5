"""The catalogue as data: an exception class, its instances, their gold resolution and human log."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from opsagent.tools.platform.scenarios import AdminWrite

Outcome = Literal["resolved", "escalated"]
Risk = Literal["low", "high"]


class GoldAction(BaseModel, frozen=True):
    """One tool call of the gold resolution, with every argument known when the instance is made."""

    tool: str
    args: dict[str, Any]
    key_args: list[str] = Field(description="Arguments the scorer compares; the rest is free text.")
    writes: bool
    risk: Risk = Field(description="The policy's risk tier of this call.")
    expect_ok: bool = Field(True, description="False for a read that must be tried and finds no record.")

    def label(self) -> str:
        return f"{self.tool}({', '.join(f'{k}={self.args[k]!r}' for k in self.key_args)})"


class StateAssertion(BaseModel, frozen=True):
    """A fact the systems of record must show at the end: rows of `system.table` matching `where`."""

    system: str
    table: str
    where: dict[str, Any]
    count: int | None = Field(None, description="Exact number of matching rows; None: at least one.")
    values: dict[str, Any] = Field(default_factory=dict, description="Every matching row has these values.")

    def failure(self, snapshots: dict[str, dict[str, list[dict]]]) -> str | None:
        """Why the snapshots break this assertion, or None."""
        rows = [r for r in snapshots.get(self.system, {}).get(self.table, [])
                if all(same(r.get(k), v) for k, v in self.where.items())]
        where = f"{self.system}.{self.table} where {self.where}"
        if self.count is not None and len(rows) != self.count:
            return f"{where}: {len(rows)} row(s), expected {self.count}"
        if self.count is None and not rows:
            return f"{where}: no row"
        for r in rows:
            wrong = {k: r.get(k) for k, v in self.values.items() if not same(r.get(k), v)}
            if wrong:
                return f"{where}: {wrong} instead of {({k: self.values[k] for k in wrong})}"
        return None


class Gold(BaseModel):
    """The correct resolution: the actions (reads included), the end state, the outcome."""

    outcome: Outcome
    actions: list[GoldAction] = Field(min_length=1)
    assertions: list[StateAssertion] = Field(min_length=1)
    team: str | None = Field(None, description="The human team an escalation is handed to.")
    reason: str = Field(description="Why, as the agent's final word on the case.")


class HumanAction(BaseModel):
    tool: str
    args: dict[str, Any]
    at: str


class HumanLog(BaseModel):
    """What the ops team did on the instance (for shadow-mode comparison)."""

    actor: str
    outcome: Outcome | None = Field(description="None when the ticket was left unfinished.")
    actions: list[HumanAction]
    deviation: str | None = Field(description="How this differs from the gold, or None if it does not.")
    minutes: int = Field(description="Handling time.")


class Instance(BaseModel):
    """One planted exception: what ops report, the data planted for it, the gold and the human log."""

    instance_id: str
    exception_type: str
    seed: int = Field(description="The eval-set seed it was made from (decides the split).")
    index: int
    variant: str = Field(description="Which inconsistency was planted (see the class's variants).")
    description: str = Field(description="Free text as ops wrote it.")
    entities: dict[str, str]
    keys: list[str] = Field(description="Entity values that identify this instance's rows (scoring).")
    setup: list[AdminWrite] = Field(description="The records planted through the admin routes.")
    gold: Gold
    human: HumanLog | None = None
    facts: dict[str, Any] = Field(default_factory=dict, description="Planted ground truth.")


@dataclass(frozen=True)
class Variant:
    """One way an instance of a class can be planted, and what share of instances it gets."""

    share: float
    outcome: Outcome
    high_risk: bool = False
    note: str = ""


@dataclass(frozen=True)
class Planted:
    """What a class's builder returns for one instance."""

    description: str
    entities: dict[str, str]
    setup: list[AdminWrite]
    gold: Gold
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExceptionClass:
    """An exception class of the catalogue and its seeded generator."""

    name: str
    summary: str
    systems: tuple[str, ...]
    variants: dict[str, Variant]
    identifying: tuple[str, ...]  # entity keys whose values identify the instance's rows
    build: Callable[..., Planted] | None = None  # (draw) -> Planted, for the standard maker
    make: Callable[..., list[Instance]] | None = None  # (seed, count, shares) -> instances, custom

    @property
    def escalate_share(self) -> float:
        return sum(v.share for v in self.variants.values() if v.outcome == "escalated")

    @property
    def high_risk_share(self) -> float:
        return sum(v.share for v in self.variants.values() if v.high_risk)

    def shares(self, escalate_share: float | None = None) -> dict[str, float]:
        """Variant shares, the escalating ones scaled to `escalate_share` in total if given."""
        if escalate_share is None:
            return {k: v.share for k, v in self.variants.items()}
        esc, rest = self.escalate_share, 1 - self.escalate_share
        return {k: (v.share / esc * escalate_share if v.outcome == "escalated" else
                    v.share / rest * (1 - escalate_share)) for k, v in self.variants.items()}


def same(a: Any, b: Any) -> bool:
    """Equality with a cent of tolerance between numbers (booleans are not numbers)."""
    def number(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    if number(a) and number(b):
        return math.isclose(a, b, abs_tol=0.005)
    return a == b
