"""The tool model: one operation of a system of record, and the result of calling it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, Field, model_validator


class ToolSpec(BaseModel, frozen=True):
    """One callable operation: an OpenAPI operation of a service, or a tool of an MCP server."""

    name: str = Field(description="The OpenAPI operationId (e.g. tms_open_weight_dispute), or the "
                      "MCP tool's name with its source's prefix.")
    system: str = Field(description="The source that owns it: a service (warehouse, carrier, ...) "
                        "or an MCP server, as named in the registry's sources.")
    source: Literal["openapi", "mcp"] = Field(
        "openapi", description="How it is called: openapi = an HTTP request per its operation; "
        "mcp = tools/call on the MCP server named by `system`.")
    method: str = Field(description="HTTP method, upper case; `MCP` for an MCP tool.")
    path: str = Field(description="Path template, e.g. /shipments/{shipment_id}/weight-disputes; "
                      "for an MCP tool, its name on the server.")
    description: str = Field(description="The operation's summary and description.")
    parameters: dict = Field(
        description="JSON schema (type object) of the arguments: path, query and JSON body fields."
    )
    path_params: list[str] = Field(description="Arguments substituted into the path template.")
    body_params: list[str] = Field(description="Arguments sent as JSON body fields (for an MCP "
                                   "tool: every argument).")
    query_params: list[str] = Field(default_factory=list,
                                    description="Arguments sent as URL query parameters.")
    writes: bool = Field(description="True if the call changes state.")
    reversible: bool | None = Field(description="From x-opsagent-reversible; None for reads.")
    inverse: str | None = Field(description="operationId of the inverse, from x-opsagent-inverse.")
    supports_dry_run: bool = Field(description="The source can preview a call without applying "
                                   "it: `?dry_run=true` (OpenAPI) or a `dry_run` argument (MCP).")
    idempotency: Literal["header", "argument", "meta"] | None = Field(
        None, description="How a write carries its idempotency key, so a re-sent call applies once: "
        "header = `Idempotency-Key` (OpenAPI writes, the default), argument = the MCP tool's own "
        "`idempotency_key` argument, meta = the MCP call's `_meta` (a server its source declares "
        "honours it). None for a write: it cannot be made idempotent, so it is high risk and sent once.")

    @model_validator(mode="before")
    @classmethod
    def _http_writes_take_a_key(cls, data: Any) -> Any:
        if (isinstance(data, dict) and "idempotency" not in data and data.get("writes")
                and data.get("source", "openapi") == "openapi"):
            return {**data, "idempotency": "header"}
        return data


class ToolResult(BaseModel):
    """The outcome of one call to a tool; never an exception for HTTP, MCP or transport failures."""

    ok: bool = Field(description="True for a 2xx answer (MCP: a result that is not an error).")
    status_code: int | None = Field(description="The HTTP status; None when the transport failed "
                                    "and for MCP tools.")
    body: Any = Field(description="Parsed JSON, or text if the answer is not JSON.")
    error: str | None = Field(description="Human-readable cause when not ok (secrets redacted, then cut "
                              "to `tools.redaction.MAX_ERROR_CHARS`).")
    dry_run: bool = False
    attempts: int = Field(1, description="How many times the call was sent (retries included).")
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
