"""The policy that mediates every tool call: config, typed decisions, the check chain, the engine."""

from opsagent.policy.checks import DEFAULT_CHECKS, Check, CheckContext, CheckResult
from opsagent.policy.config import (
    ArgConstraint,
    ClassPolicy,
    PolicyConfig,
    RiskCondition,
    ToolPolicy,
    load_default_policy,
)
from opsagent.policy.engine import PolicyEngine
from opsagent.policy.records import PolicyDecision, ToolCallRequest, args_digest, canonical_json

__all__ = [
    "DEFAULT_CHECKS",
    "ArgConstraint",
    "Check",
    "CheckContext",
    "CheckResult",
    "ClassPolicy",
    "PolicyConfig",
    "PolicyDecision",
    "PolicyEngine",
    "RiskCondition",
    "ToolCallRequest",
    "ToolPolicy",
    "args_digest",
    "canonical_json",
    "load_default_policy",
]
