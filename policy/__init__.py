"""The policy that mediates every tool call: config, typed decisions, the check chain, the engine,
limits and their ledger, permits, and the classes' autonomy modes."""

from opsagent.policy.autonomy import AutonomyStore
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
from opsagent.policy.ledger import ActionKey, LedgerEntry, SpendLedger
from opsagent.policy.limits import LimitExceeded, LimitsConfig, SpendPolicy
from opsagent.policy.modes import ClassMode, GateConfig, Mode, ModeChange
from opsagent.policy.permits import (
    PermitSigner,
    PermitVerifier,
    issue_permit,
    new_permit_key,
    process_permit_key,
    verify_permit,
)
from opsagent.policy.records import (
    LimitUsage,
    Permit,
    PolicyDecision,
    ToolCallRequest,
    args_digest,
    canonical_json,
)

__all__ = [
    "DEFAULT_CHECKS",
    "ActionKey",
    "ArgConstraint",
    "AutonomyStore",
    "Check",
    "CheckContext",
    "CheckResult",
    "ClassMode",
    "ClassPolicy",
    "GateConfig",
    "LedgerEntry",
    "LimitExceeded",
    "LimitUsage",
    "LimitsConfig",
    "Mode",
    "ModeChange",
    "Permit",
    "PermitSigner",
    "PermitVerifier",
    "PolicyConfig",
    "PolicyDecision",
    "PolicyEngine",
    "RiskCondition",
    "SpendLedger",
    "SpendPolicy",
    "ToolCallRequest",
    "ToolPolicy",
    "args_digest",
    "canonical_json",
    "issue_permit",
    "load_default_policy",
    "new_permit_key",
    "process_permit_key",
    "verify_permit",
]
