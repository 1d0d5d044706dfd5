"""Spending and rate limits: how the policy file states them, which apply to a call, one error type.

Spend is read from the argument a tool's `spend` block names; every spend limit in a policy is in
the one currency `limits.currency` (a call in another currency is denied: no conversion). Scopes:

- per action: the call's own amount;
- per case: this case's spend on the tool (for this exception class);
- per day: the whole cluster's spend on the tool for the class, and (`limits.spend_per_day`)
  on every tool of every class, per UTC day;
- per entity: the spend on the tool for one business entity (the invoice, customer or shipment an
  argument names, `spend.per_entity`), across every case and class, per UTC day and in all: eleven
  cases crediting 90 EUR each on one invoice count as 990 EUR on that invoice;
- rate: calls per minute to the tool for the class (`calls_per_minute` on the tool), for the class
  (on the class), and for the whole cluster (`limits.calls_per_minute`).

Which limits apply to a call: `policy.checks.limits_for`. Counting happens in `policy.ledger`; a limit that would be exceeded raises `LimitExceeded`, which
the check chain turns into a deny (or `require_approval` when the limit's `on_exceed` says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from opsagent.errors import LimitExceeded  # noqa: F401  (re-exported: policy.limits.LimitExceeded)

OnExceed = Literal["deny", "require_approval"]
Window = Literal["action", "case", "day", "minute", "ever"]

MAX_AMOUNT = 1e12  # amounts are counted in millionths in a 64-bit integer

_Strict = ConfigDict(extra="forbid", frozen=True)


class EntitySpend(BaseModel):
    """Spend counted across cases for one business entity, e.g. credits on one invoice."""

    model_config = _Strict

    arg: str = Field(description="The argument naming the entity (e.g. invoice_id); each value is counted "
                     "on its own, over every case and exception class.")
    per_day: float | None = Field(None, ge=0, description="The most all cases may spend on this tool for "
                                  "one entity per UTC day.")
    total: float | None = Field(None, ge=0, description="The most all cases may ever spend on this tool for "
                                "one entity.")
    on_exceed: OnExceed | None = Field(
        None, description="deny or require_approval past these limits; default the spend block's on_exceed.")


class SpendPolicy(BaseModel):
    """A tool that moves money: the argument carrying the amount, and how much may move."""

    model_config = _Strict

    arg: str = Field(description="The argument carrying the amount (a number >= 0, in limits.currency).")
    currency_arg: str | None = Field(
        None, description="The argument naming the currency; its value must equal limits.currency."
    )
    per_action: float | None = Field(None, ge=0, description="The most one call may spend.")
    per_case: float | None = Field(None, ge=0, description="The most one case may spend on this tool.")
    per_day: float | None = Field(
        None, ge=0, description="The most the whole cluster may spend on this tool for this class per UTC day."
    )
    on_exceed: OnExceed | None = Field(
        None,
        description="deny or require_approval when one of these limits is exceeded; default limits.on_exceed.",
    )
    per_entity: EntitySpend | None = Field(
        None, description="Limits per business entity, counted across cases (e.g. per invoice).")


class LimitsConfig(BaseModel):
    """Cluster-wide limits and how limits behave (the policy file's top-level `limits`)."""

    model_config = _Strict

    currency: str = Field("EUR", description="The currency every spend limit is written in.")
    spend_per_day: float | None = Field(
        None, ge=0, description="The most the whole cluster may spend per UTC day, all tools and classes."
    )
    calls_per_minute: int | None = Field(
        None, ge=0, description="The most tool calls the whole cluster may be allowed per minute."
    )
    on_exceed: OnExceed = Field(
        "deny", description="What exceeding a limit does unless the limit says otherwise."
    )
    permit_ttl_s: float = Field(
        60, gt=0, description="An allow's permit expires this many seconds after issue."
    )
    hold_grace_s: float = Field(
        300, ge=0,
        description="An uncommitted reservation keeps its budget this long after its permit expires "
        "(covers a call still in flight); then it lapses.",
    )


@dataclass(frozen=True)
class Limit:
    """One limit applying to one call, and which recorded actions count against it."""

    what: str
    kind: Literal["spend", "calls"]
    window: Window
    limit: float
    on_exceed: OnExceed
    tool: str | None = None  # count only this tool's actions (None: every tool)
    exception_type: str | None = None  # count only this class's actions (None: every class)
    entity: str | None = None  # count only actions on this entity ("invoice_id=INV-1")


def entity_key(per: EntitySpend, args: dict[str, Any]) -> str:
    """`arg=value` of the entity a call spends on; ValueError if the argument is not a name."""
    value = args.get(per.arg)
    if not isinstance(value, str) or not value:
        raise ValueError(f"the entity argument {per.arg!r} is missing or not a string")
    return f"{per.arg}={value}"


def spend_amount(spend: SpendPolicy, currency: str, args: dict[str, Any]) -> tuple[float, str]:
    """The amount and currency a call spends; ValueError if the policy cannot count it."""
    if spend.arg not in args:
        raise ValueError(f"the amount argument {spend.arg!r} is missing")
    amount = args[spend.arg]
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount):
        raise ValueError(f"{spend.arg}={amount!r} is not a finite number")
    if not 0 <= amount <= MAX_AMOUNT:
        raise ValueError(f"{spend.arg}={amount!r} is outside 0..{MAX_AMOUNT:g}")
    if spend.currency_arg is not None:
        given = args.get(spend.currency_arg)
        if given != currency:
            raise ValueError(
                f"{spend.currency_arg}={given!r}: spend limits are in {currency} and amounts are not converted"
            )
    return float(amount), currency
