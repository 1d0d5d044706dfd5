"""The tool model: one operation of a system of record, and the result of calling it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import jsonschema
from pydantic import BaseModel, Field


class ToolSpec(BaseModel, frozen=True):
    """One callable operation, derived from its service's OpenAPI document."""

    name: str = Field(description="The OpenAPI operationId, e.g. tms_open_weight_dispute.")
    system: str = Field(description="The service that owns it: warehouse | carrier.")
    method: str = Field(description="HTTP method, upper case.")
    path: str = Field(description="Path template, e.g. /shipments/{shipment_id}/weight-disputes.")
    description: str = Field(description="The operation's summary and description.")
    parameters: dict = Field(
        description="JSON schema (type object) of the arguments: path params and JSON body fields."
    )
    path_params: list[str]
    body_params: list[str]
    writes: bool = Field(description="True if the call changes state.")
    reversible: bool | None = Field(description="From x-opsagent-reversible; None for reads.")
    inverse: str | None = Field(description="operationId of the inverse, from x-opsagent-inverse.")
    supports_dry_run: bool


class ToolResult(BaseModel):
    """The outcome of one HTTP call to a tool; never an exception for HTTP or transport failures."""

    ok: bool = Field(description="True for a 2xx answer.")
    status_code: int | None = Field(description="None when the transport failed.")
    body: Any = Field(description="Parsed JSON, or text if the answer is not JSON.")
    error: str | None = Field(description="Short human-readable cause when not ok.")
    dry_run: bool = False
    started_at: datetime
    finished_at: datetime
    duration_ms: float


def argument_errors(spec: ToolSpec, args: dict[str, Any]) -> list[str]:
    """Every way `args` violates the tool's parameter schema (empty if valid)."""
    validator = jsonschema.Draft202012Validator(spec.parameters)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(arguments)'}: {e.message}"
        for e in sorted(validator.iter_errors(args), key=lambda e: list(map(str, e.absolute_path)))
    ]
