from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from opsagent.tools.spec import ToolResult, ToolSpec, argument_errors

SPEC = ToolSpec(
    name="tms_open_weight_dispute", system="tms", method="POST",
    path="/shipments/{shipment_id}/weight-disputes", description="Open a dispute.",
    parameters={
        "type": "object",
        "properties": {"shipment_id": {"type": "string"},
                       "claimed_weight_kg": {"type": "number", "exclusiveMinimum": 0}},
        "required": ["shipment_id", "claimed_weight_kg"],
        "additionalProperties": False,
    },
    path_params=["shipment_id"], body_params=["claimed_weight_kg"], writes=True,
    reversible=True, inverse="tms_withdraw_weight_dispute", supports_dry_run=True,
)


def test_argument_errors_lists_every_violation():
    assert argument_errors(SPEC, {"shipment_id": "SHP-1", "claimed_weight_kg": 2.5}) == []
    errors = argument_errors(SPEC, {"claimed_weight_kg": -1, "extra": 1})
    assert len(errors) == 3
    assert any("shipment_id" in e for e in errors)
    assert any(e.startswith("claimed_weight_kg:") for e in errors)
    assert any("extra" in e for e in errors)


def test_spec_is_frozen_and_result_round_trips():
    with pytest.raises(ValidationError):
        SPEC.name = "x"  # type: ignore[misc]
    assert SPEC.name == "tms_open_weight_dispute"
    now = datetime.now(UTC)
    result = ToolResult(ok=True, status_code=200, body={"a": 1}, error=None, started_at=now,
                        finished_at=now, duration_ms=0.0)
    assert ToolResult.model_validate_json(result.model_dump_json()) == result
    assert result.dry_run is False
