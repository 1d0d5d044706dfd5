"""The policy's typed input (a proposed tool call) and output (a decision)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

Verdict = Literal["allow", "require_approval", "deny"]


class ToolCallRequest(BaseModel, frozen=True):
    """A tool call the planner proposes, as the policy sees it."""

    case_id: str = Field(description="The case the call belongs to.")
    exception_type: str = Field(description="The case's exception class, e.g. weight_mismatch.")
    step: int = Field(description="The planner step that proposed the call.")
    tool: str = Field(description="The tool name.")
    args: dict[str, Any] = Field(description="The tool's arguments, exactly as they would be sent.")
    entities: dict[str, str] = Field(description='The entities named in the case, e.g. {"shipment_id": "SHP-1"}.')


class PolicyDecision(BaseModel, frozen=True):
    """The policy's verdict on one proposed tool call."""

    verdict: Verdict = Field(description="allow, require_approval or deny.")
    risk: Literal["low", "high"] | None = Field(description="The risk tier; None when denied before it was known.")
    reasons: list[str] = Field(description="Human-readable reasons; the first is the deciding one.")
    checks: list[str] = Field(description="Names of the checks that ran, in order.")
    policy_version: str = Field(description="Digest of the policy content that decided.")
    args_digest: str = Field(description="sha256 of the canonical JSON of {tool, args}.")


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8; non-JSON values fall back to their repr."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


def args_digest(tool: str, args: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of {"tool": tool, "args": args}; binds approvals to exact args."""
    return hashlib.sha256(canonical_json({"tool": tool, "args": args}).encode()).hexdigest()
