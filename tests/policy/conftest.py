"""Hand-built tool specs for the weight_mismatch class, their registry and an engine on the default policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from opsagent.policy import PolicyConfig, PolicyEngine, ToolCallRequest, load_default_policy
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolSpec
from tests.fakes.autonomy import promoted


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


_ID = {"type": "string", "minLength": 1, "maxLength": 64}
_REASON = {"type": "string", "maxLength": 2000}


def _spec(name: str, method: str, props: dict[str, Any], **kw: Any) -> ToolSpec:
    system = name.split("_", 1)[0]
    writes = method != "GET"
    return ToolSpec(
        name=name,
        system=system,
        method=method,
        path=f"/{name}",
        description=name.replace("_", " "),
        parameters=_object(props),
        path_params=[],
        body_params=list(props) if writes else [],
        writes=writes,
        reversible=kw.get("reversible", None if not writes else True),
        inverse=kw.get("inverse"),
        supports_dry_run=writes,
    )


SPECS = [
    _spec("wms_get_shipment", "GET", {"shipment_id": _ID}),
    _spec("tms_get_shipment", "GET", {"shipment_id": _ID}),
    _spec(
        "tms_open_weight_dispute",
        "POST",
        {"shipment_id": _ID, "claimed_weight_kg": {"type": "number", "exclusiveMinimum": 0}, "reason": _REASON},
        inverse="tms_withdraw_weight_dispute",
    ),
    _spec("tms_withdraw_weight_dispute", "POST", {"dispute_id": _ID}),
    _spec(
        "tms_adjust_billed_weight",
        "POST",
        {"shipment_id": _ID, "billed_weight_kg": {"type": "number"}, "reason": _REASON},
        reversible=False,
    ),
    _spec("wms_request_rescan", "POST", {"shipment_id": _ID, "reason": _REASON}),
    # a money-moving tool and its system-of-record read, for limits and cross-record checks
    _spec("billing_get_invoice", "GET", {"invoice_id": _ID}),
    _spec(
        "billing_issue_credit",
        "POST",
        {"invoice_id": _ID, "amount": {"type": "number"}, "currency": {"type": "string"}, "reason": _REASON},
        reversible=False,
    ),
]


@pytest.fixture(scope="session")
def registry() -> ToolRegistry:
    return ToolRegistry(
        SPECS, {"wms": "http://wms.test", "tms": "http://tms.test", "billing": "http://billing.test"}
    )


@pytest.fixture(scope="session")
def engine(registry: ToolRegistry) -> PolicyEngine:
    """The shipped policy with every class promoted to autonomous (it ships them in shadow)."""
    config = load_default_policy()
    return PolicyEngine(config, registry, autonomy=promoted(config))


@pytest.fixture(scope="session")
def make_request() -> Callable[..., ToolCallRequest]:
    def make(tool: str, args: dict[str, Any] | None = None, **kw: Any) -> ToolCallRequest:
        fields: dict[str, Any] = {
            "case_id": "CASE-1",
            "exception_type": "weight_mismatch",
            "step": 1,
            "tool": tool,
            "args": {"shipment_id": "SHP-1"} if args is None else args,
            "entities": {"shipment_id": "SHP-1"},
        }
        fields.update(kw)
        return ToolCallRequest(**fields)

    return make


BILLING = """
limits:
  currency: EUR
  spend_per_day: {cluster_day}
  calls_per_minute: {cluster_rate}
  on_exceed: deny
  permit_ttl_s: 60
  hold_grace_s: 240
classes:
  billing_dispute:
    initial_mode: autonomous  # these tests are about limits; test_autonomy covers the modes
    calls_per_minute: {class_rate}
    tools:
      billing_get_invoice: {{risk: low, scope: [invoice_id]}}
      billing_issue_credit:
        risk: low
        high_if: [{{arg: amount, above: 200}}]
        scope: [invoice_id]
        constraints:
          amount: {{le_read: billing_get_invoice.open_amount}}
        spend:
          arg: amount
          currency_arg: currency
          per_action: {per_action}
          per_case: {per_case}
          per_day: {per_day}
          on_exceed: {on_exceed}
        calls_per_minute: {tool_rate}
"""
BILLING_DEFAULTS = {
    "cluster_day": 1000, "cluster_rate": "null", "class_rate": "null", "per_action": 300, "per_case": 400,
    "per_day": 800, "on_exceed": "null", "tool_rate": "null",
}


@pytest.fixture(scope="session")
def billing_policy() -> Callable[..., PolicyConfig]:
    """The billing_dispute policy with a credit tool under spend limits; keyword overrides per field."""

    def make(**overrides: Any) -> PolicyConfig:
        return PolicyConfig.from_yaml(BILLING.format(**{**BILLING_DEFAULTS, **overrides}))

    return make


class Clock:
    """A settable clock for engines and ledgers (unix seconds), starting at noon UTC."""

    def __init__(self, now: float = 1_779_969_600.0) -> None:  # 2026-05-28 12:00 UTC
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="session")
def credit() -> Callable[..., ToolCallRequest]:
    """A credit request on invoice INV-1 whose read shows `open_amount` still open."""

    def make(case_id: str = "CASE-1", step: int = 1, amount: float = 100, currency: str = "EUR", *,
             open_amount: float = 10_000, **kw: Any) -> ToolCallRequest:
        fields: dict[str, Any] = {
            "case_id": case_id, "exception_type": "billing_dispute", "step": step,
            "tool": "billing_issue_credit",
            "args": {"invoice_id": "INV-1", "amount": amount, "currency": currency, "reason": "overbilled"},
            "entities": {"invoice_id": "INV-1"},
            "observations": {"billing_get_invoice": {"invoice_id": "INV-1", "open_amount": open_amount}},
        }
        fields.update(kw)
        return ToolCallRequest(**fields)

    return make
