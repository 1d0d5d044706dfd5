"""The ordered chain of small checks a proposed tool call goes through; the first block wins.

A check is `(request, ctx) -> CheckResult | None`: None lets the call through to the next check,
a `CheckResult` blocks it with a verdict (deny or require_approval) and the reason.

After the chain, `autonomy_mode` applies the class's autonomy mode to a call it did not deny (so a
deny always wins): in shadow a write becomes `propose` (dry-run only, never executed), in
supervised every write needs approval, in autonomous the chain's verdict stands.

Checks do not change anything: `within_limits` only reads the ledger and leaves what to reserve
on the context; the engine reserves it, atomically and re-checked, once the verdict is allow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import jsonschema
from jsonschema.exceptions import best_match

from opsagent.errors import ToolError
from opsagent.policy.config import ClassPolicy, PolicyConfig, Risk, ToolPolicy, read_value
from opsagent.policy.ledger import ActionKey, LedgerEntry, SpendLedger
from opsagent.policy.limits import Limit, LimitExceeded, entity_key, spend_amount
from opsagent.policy.modes import FAIL_CLOSED, Mode
from opsagent.policy.no_dry_run import no_dry_run_risk, no_idempotency_risk
from opsagent.policy.records import LimitUsage, ToolCallRequest, args_digest

if TYPE_CHECKING:
    from opsagent.tools.registry import ToolRegistry
    from opsagent.tools.spec import ToolSpec

_MAX_MESSAGE = 200


@dataclass(frozen=True)
class CheckResult:
    """A block: the call does not simply go ahead (`propose` only from `autonomy_mode`)."""

    verdict: Literal["deny", "require_approval", "propose"]
    reason: str
    risk: Risk | None = None


@dataclass
class CheckContext:
    """What checks see besides the request; one per decision. Checks may record the risk tier."""

    config: PolicyConfig
    registry: ToolRegistry
    validators: dict[str, Any] = field(default_factory=dict)  # tool name -> jsonschema validator, shared
    risk: Risk | None = None
    ledger: SpendLedger | None = None  # the counters behind spend and rate limits
    now: float = field(default_factory=time.time)
    approved: bool = False  # a human approved exactly this action: require_approval limits do not block
    limits: list[LimitUsage] = field(default_factory=list)  # the limits consulted, for the decision
    reservation: tuple[LedgerEntry, list[Limit]] | None = None  # what to reserve if the call is allowed
    mode: Mode = FAIL_CLOSED  # the class's autonomy mode, read once per decision
    proposed: frozenset[str] = frozenset()  # shadow mode: tools whose observation is a dry-run preview

    def class_policy(self, request: ToolCallRequest) -> ClassPolicy:
        return self.config.classes[request.exception_type]

    def tool_policy(self, request: ToolCallRequest) -> ToolPolicy:
        return self.class_policy(request).tools[request.tool]

    def spec(self, request: ToolCallRequest) -> ToolSpec:
        return self.registry.get(request.tool)


Check = Callable[[ToolCallRequest, CheckContext], CheckResult | None]


def deny(reason: str) -> CheckResult:
    return CheckResult("deny", reason)


def known_class(request: ToolCallRequest, ctx: CheckContext) -> CheckResult | None:
    """The exception class is one the policy lists."""
    if request.exception_type not in ctx.config.classes:
        known = ", ".join(sorted(ctx.config.classes)) or "none"
        return deny(f"unknown exception class {request.exception_type!r} (policy lists: {known})")
    return None


def allowlisted(request: ToolCallRequest, ctx: CheckContext) -> CheckResult | None:
    """The tool is on the class's allowlist."""
    tools = ctx.class_policy(request).tools
    if request.tool not in tools:
        allowed = ", ".join(tools) or "none"
        return deny(
            f"tool {request.tool!r} is not allowed for exception class {request.exception_type!r} "
            f"(allowed: {allowed})"
        )
    return None


def registered(request: ToolCallRequest, ctx: CheckContext) -> CheckResult | None:
    """The tool exists in the tool registry."""
    try:
        ctx.spec(request)
    except ToolError as err:
        return deny(f"tool {request.tool!r} is not in the tool registry: {err}")
    return None


def schema_valid(request: ToolCallRequest, ctx: CheckContext) -> CheckResult | None:
    """The arguments validate against the tool's JSON schema."""
    validator = ctx.validators.get(request.tool)
    if validator is None:
        schema = ctx.spec(request).parameters
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        cls.check_schema(schema)
        validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
        ctx.validators[request.tool] = validator
    errors = list(validator.iter_errors(request.args))
    if not errors:
        return None
    error = best_match(errors)
    where = ".".join(str(p) for p in error.absolute_path) or "arguments"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    message = error.message.replace(repr(error.instance), _short(repr(error.instance), 40))
    return deny(f"invalid arguments for {request.tool!r}: {where}: {_short(message)}{more}")


def constraints(request: ToolCallRequest, ctx: CheckContext) -> CheckResult | None:
    """Argument values are within the policy's limits for this class."""
    policy = ctx.tool_policy(request)
    known = _arg_names(ctx.spec(request))
    for arg, constraint in policy.constraints.items():
        if arg not in known:
            return deny(f"policy constrains argument {arg!r}, which tool {request.tool!r} does not have")
        if arg in request.args and (problem := constraint.violation(request.args[arg])):
            return deny(f"{request.tool}: {arg} {_short(problem)}")
    return None


def scope(request: ToolCallRequest, ctx: CheckContext) -> CheckResult | None:
    """Scoped arguments name the case's own entities, nothing else."""
    policy = ctx.tool_policy(request)
    known = _arg_names(ctx.spec(request))
    for arg, entity in policy.scope.items():
        if arg not in known:
            return deny(f"policy scopes argument {arg!r}, which tool {request.tool!r} does not have")
        if arg not in request.args:
            continue
        if entity not in request.entities:
            return deny(
                f"{request.tool}: {arg} must be the case's {entity}, but case {request.case_id} names none"
            )
        value, expected = request.args[arg], request.entities[entity]
        if not isinstance(value, str) or value != expected:
            return deny(
                f"{request.tool}: {arg}={_short(repr(value))} is outside case {request.case_id} "
                f"(the case's {entity} is {expected!r})"
            )
    return None


def cross_record(request: ToolCallRequest, ctx: CheckContext) -> CheckResult | None:
    """Arguments agree with what the case has read from the systems of record; a missing read denies."""
    policy = ctx.tool_policy(request)
    observations = request.observations
    for ref, constraint in policy.reads.items():
        try:
            value = read_value(ref, observations)
        except LookupError as err:
            if _not_in_preview(ref, ctx, observations):
                continue
            return deny(f"{request.tool} needs {ref}, but {err}")
        if problem := constraint.violation(value) or constraint.read_violation(value, observations):
            return deny(f"{request.tool}: {ref} {_short(problem)}")
    for arg, constraint in policy.constraints.items():
        if arg in request.args and (problem := constraint.read_violation(request.args[arg], observations)):
            return deny(f"{request.tool}: {arg} {_short(problem)}")
    for ref, entity in policy.related.items():
        if entity not in request.entities:
            return deny(f"{request.tool} needs {ref} to be the case's {entity}, but case {request.case_id} "
                        "names none")
        try:
            value = read_value(ref, observations)
        except LookupError as err:
            return deny(f"{request.tool} needs {ref}, but {err}")
        if value != request.entities[entity]:
            return deny(f"{request.tool}: {ref} is {_short(repr(value), 60)}, not the case's {entity} "
                        f"{request.entities[entity]!r}: the records do not belong together")
    return None


def _not_in_preview(ref: str, ctx: CheckContext, observations: dict[str, Any]) -> bool:
    """Shadow mode: `ref` names a field a proposed write's dry-run preview does not show (e.g. the
    id of the record it would create). Unknown, so it does not block the next proposal; nothing
    is executed in shadow mode, and outside it a proposal is never an observation."""
    tool = ref.partition(".")[0]
    return tool in ctx.proposed and isinstance(observations.get(tool), dict)


def within_limits(request: ToolCallRequest, ctx: CheckContext) -> CheckResult | None:
    """Spend and rate limits would not be exceeded (reads the ledger; the engine reserves on allow)."""
    try:
        found, amount, currency = limits_for(ctx.config, request)
    except ValueError as err:
        return deny(f"{request.tool}: the spend cannot be counted: {_short(str(err))}")
    if not found:
        return None
    if ctx.ledger is None:
        return deny(f"{request.tool} has limits but the policy has no ledger to count them")
    key = ActionKey(request.case_id, request.step, args_digest(request.tool, request.args))
    entity = next((limit.entity for limit in found if limit.entity is not None), None)
    entry = LedgerEntry(key, request.exception_type, request.tool, amount, currency, entity)
    try:
        ctx.limits = ctx.ledger.usage(entry, found, now=ctx.now, approved=ctx.approved)
    except LimitExceeded as err:
        ctx.limits = err.consulted
        if err.on_exceed == "deny":
            return deny(str(err))
        return CheckResult("require_approval", str(err), assess_risk(ctx.tool_policy(request), request.args)[0])
    ctx.reservation = (entry, found)
    if exceeded := [u for u in ctx.limits if u.exceeded]:
        # the ledger lets these through only for an approved action, whose approval covers them
        reason = str(LimitExceeded(exceeded[0].what, exceeded[0].value, exceeded[0].limit))
        if not ctx.approved:
            return deny(reason)
        return CheckResult("require_approval", reason, assess_risk(ctx.tool_policy(request), request.args)[0])
    return None


def risk_tier(request: ToolCallRequest, ctx: CheckContext) -> CheckResult | None:
    """Records the risk tier; high risk needs human approval."""
    risk, why = assess_risk(ctx.tool_policy(request), request.args)
    spec = ctx.spec(request)
    if risk == "low" and (blind := no_dry_run_risk(spec) or no_idempotency_risk(spec)):  # no_dry_run.py
        risk, why = "high", blind
    ctx.risk = risk
    if risk == "high":
        return CheckResult(
            "require_approval", f"{request.tool} is high risk for {request.exception_type} ({why})", "high"
        )
    return None


def autonomy_mode(
    request: ToolCallRequest, ctx: CheckContext, verdict: Literal["allow", "require_approval"]
) -> CheckResult | None:
    """The class's autonomy mode, for a call the chain let through or held (never one it denied).

    Reads are never affected (a tool the registry does not know counts as a write). A write in
    shadow mode is proposed: dry-run only, never executed, even if a human approved it. In
    supervised mode a write the chain allowed needs approval, unless a human approved exactly this
    action. In autonomous mode the chain's verdict stands, except that a write the planner was
    less sure of than the class's `min_confidence` (or whose confidence is unknown) is held.
    """
    try:
        writes = ctx.spec(request).writes
    except ToolError:  # only a custom chain gets here without `registered`: count it as a write
        writes = True
    if not writes:
        return None
    try:
        risk = ctx.risk or assess_risk(ctx.tool_policy(request), request.args)[0]
    except KeyError:  # not on the allowlist (a custom chain again): assume the worst
        risk = "high"
    if ctx.mode == Mode.shadow:
        return CheckResult("propose", f"{request.exception_type} is in shadow mode: {request.tool} is "
                           "proposed and dry-run only, never executed", risk)
    if ctx.mode == Mode.supervised and verdict == "allow" and not ctx.approved:
        return CheckResult("require_approval", f"{request.exception_type} is in supervised mode: every "
                           "write needs approval", risk)
    if ctx.mode not in (Mode.supervised, Mode.autonomous):
        return CheckResult("deny", f"unknown autonomy mode {ctx.mode!r}")
    listed = ctx.config.classes.get(request.exception_type)
    floor = listed.min_confidence if listed is not None and ctx.mode == Mode.autonomous else None
    if floor is not None and verdict == "allow" and not ctx.approved and not (
            request.confidence is not None and request.confidence >= floor):
        sure = "unknown" if request.confidence is None else f"{request.confidence:.2f}"
        return CheckResult("require_approval", f"the planner's confidence in {request.tool} is {sure}, "
                           f"below {floor:.2f} for {request.exception_type}: a human decides", risk)
    return None


def assess_risk(policy: ToolPolicy, args: dict[str, Any]) -> tuple[Risk, str]:
    """The tool's risk tier for these arguments, and why."""
    if policy.risk == "high":
        return "high", policy.note or "high-risk tool"
    for condition in policy.high_if:
        if (why := condition.matches(args)) is not None:
            return "high", why
    return "low", "low-risk tool" if not policy.high_if else "no high-risk condition matched"


DEFAULT_CHECKS: tuple[Check, ...] = (
    known_class,
    allowlisted,
    registered,
    schema_valid,
    constraints,
    scope,
    cross_record,
    within_limits,
    risk_tier,
)


def check_name(check: Check) -> str:
    return getattr(check, "__name__", type(check).__name__)


def _arg_names(spec: ToolSpec) -> set[str]:
    return set(spec.parameters.get("properties", {}))


def _short(text: str, limit: int = _MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def limits_for(config: PolicyConfig, request: ToolCallRequest) -> tuple[list[Limit], float, str | None]:
    """The limits that apply to `request`, the amount it spends and its currency (None: spends nothing).

    The request must already be known to be allowlisted. Raises ValueError for an amount or
    currency the policy cannot count (missing, not a finite number >= 0, another currency).
    """
    settings = config.limits
    class_policy = config.classes[request.exception_type]
    tool_policy = class_policy.tools[request.tool]
    tool, cls = request.tool, request.exception_type
    found: list[Limit] = []
    amount, currency = 0.0, None
    spend = tool_policy.spend
    if spend is not None:
        amount, currency = spend_amount(spend, settings.currency, request.args)
        on = spend.on_exceed or settings.on_exceed
        cur = settings.currency
        for window, bound, what in (
            ("action", spend.per_action, f"spend per action on {tool} ({cur})"),
            ("case", spend.per_case, f"spend on {tool} in case {request.case_id} ({cur})"),
            ("day", spend.per_day, f"daily spend on {tool} for {cls} ({cur})"),
        ):
            if bound is not None:
                found.append(Limit(what, "spend", window, bound, on, tool, cls))
        if (per := spend.per_entity) is not None:
            entity = entity_key(per, request.args)
            on_entity = per.on_exceed or on
            for window, bound, what in (
                ("day", per.per_day, f"daily spend on {tool} for {entity} ({cur})"),
                ("ever", per.total, f"total spend on {tool} for {entity} ({cur})"),
            ):
                if bound is not None:
                    found.append(Limit(what, "spend", window, bound, on_entity, tool, None, entity))
        if settings.spend_per_day is not None:
            found.append(Limit(f"daily spend, whole cluster ({cur})", "spend", "day",
                               settings.spend_per_day, settings.on_exceed))
    for bound, what, scope_tool, scope_class in (
        (tool_policy.calls_per_minute, f"calls per minute to {tool} for {cls}", tool, cls),
        (class_policy.calls_per_minute, f"calls per minute for {cls}", None, cls),
        (settings.calls_per_minute, "calls per minute, whole cluster", None, None),
    ):
        if bound is not None:
            found.append(Limit(what, "calls", "minute", bound, settings.on_exceed, scope_tool, scope_class))
    return found, amount, currency
