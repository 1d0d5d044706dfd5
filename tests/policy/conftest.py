"""Hand-built tool specs for the weight_mismatch class, their registry and an engine on the default policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from opsagent.policy import PolicyEngine, ToolCallRequest, load_default_policy
from opsagent.tools.registry import ToolRegistry
from opsagent.tools.spec import ToolSpec


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
]


@pytest.fixture(scope="session")
def registry() -> ToolRegistry:
    return ToolRegistry(SPECS, {"wms": "http://wms.test", "tms": "http://tms.test"})


@pytest.fixture(scope="session")
def engine(registry: ToolRegistry) -> PolicyEngine:
    return PolicyEngine(load_default_policy(), registry)


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
