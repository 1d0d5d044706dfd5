"""The policy's typed input (a proposed tool call) and output (a decision, the limits it consulted,
the class's autonomy mode, and for an allowed call the permit an executor needs)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from opsagent.policy.modes import Mode

Verdict = Literal["allow", "require_approval", "deny", "propose"]
"""`propose`: the class is in shadow mode; the write is dry-run and recorded, never executed."""


class ToolCallRequest(BaseModel, frozen=True):
    """A tool call the planner proposes, as the policy sees it."""

    case_id: str = Field(description="The case the call belongs to.")
    exception_type: str = Field(description="The case's exception class, e.g. weight_mismatch.")
    step: int = Field(description="The planner step that proposed the call.")
    tool: str = Field(description="The tool name.")
    args: dict[str, Any] = Field(description="The tool's arguments, exactly as they would be sent.")
    entities: dict[str, str] = Field(description='The entities named in the case, e.g. {"shipment_id": "SHP-1"}.')
    observations: dict[str, Any] = Field(
        default_factory=dict,
        description="What the case has read so far: tool name -> body of its last successful result. "
        "Cross-record constraints (eq_read, le_read, ...) and `reads` compare against these.",
    )
    proposed: dict[str, Any] = Field(
        default_factory=dict,
        description="Writes the case proposed in shadow mode: tool name -> the result their dry run "
        "previews. They count as read only while the class is in shadow mode (nothing executes then).",
    )
    submitted_by: str | None = Field(
        None, description="Who submitted the case's exception (from the front door's authentication): "
        "they may not approve its held actions.")
    confidence: float | None = Field(
        None, ge=0.0, le=1.0,
        description="The planner's probability of choosing this tool (None: the engine cannot tell). "
        "A class's `min_confidence` holds an autonomous write below it for a human.")


class LimitUsage(BaseModel, frozen=True):
    """One limit the policy consulted for a call: what it limits, the value with this call, the limit."""

    what: str = Field(description='What is limited, e.g. "daily spend on billing_credit for billing (EUR)".')
    value: float = Field(description="The total this call would bring it to (spend, or calls in the window).")
    limit: float = Field(description="The configured limit.")
    exceeded: bool = Field(description="True if value > limit.")


class Permit(BaseModel, frozen=True):
    """The policy's signed leave to run exactly one action; executors refuse writes without one.

    Signed with the policy's Ed25519 key over every other field (see `policy.permits`); used once.
    """

    tool: str = Field(description="The tool the permit is for.")
    args_digest: str = Field(description="args_digest(tool, args) of the exact arguments allowed.")
    case_id: str = Field(description="The case the action belongs to.")
    step: int = Field(description="The case's step that proposed the action.")
    issued_at: float = Field(description="Unix time the permit was issued.")
    expires_at: float = Field(description="Unix time after which the permit is void.")
    policy_version: str = Field(description="The policy version that allowed the action.")
    nonce: str = Field(description="Random, so no two permits are alike; an executor records it before "
                       "the call and refuses a second use (unless it retries the same idempotent call).")
    key_id: str = Field(description="Which of the policy's keys signed it (sha256 of the public key, "
                        "16 hex digits): old and new keys verify during a rotation.")
    signature: str = Field(description="Hex Ed25519 signature of the other fields under the policy's "
                           "private key.")


class PolicyDecision(BaseModel, frozen=True):
    """The policy's verdict on one proposed tool call."""

    verdict: Verdict = Field(description="allow, require_approval, deny, or propose (shadow mode: a write "
                             "that is dry-run only).")
    risk: Literal["low", "high"] | None = Field(description="The risk tier; None when denied before it was known.")
    reasons: list[str] = Field(description="Human-readable reasons; the first is the deciding one.")
    checks: list[str] = Field(description="Names of the checks that ran, in order.")
    policy_version: str = Field(description="Digest of the policy content that decided.")
    args_digest: str = Field(description="sha256 of the canonical JSON of {tool, args}.")
    limits: list[LimitUsage] = Field(
        default_factory=list, description="The spending and rate limits consulted, with their values."
    )
    permit: Permit | None = Field(
        None, description="For an allow from PolicyEngine.authorize: the permit the executor needs; else None."
    )
    mode: Mode | None = Field(
        None, description="The class's autonomy mode the decision was made in (None only for old records)."
    )


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8; non-JSON values fall back to their repr."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


def args_digest(tool: str, args: dict[str, Any]) -> str:
    """sha256 hex of the canonical JSON of {"tool": tool, "args": args}; binds approvals to exact args."""
    return hashlib.sha256(canonical_json({"tool": tool, "args": args}).encode()).hexdigest()
