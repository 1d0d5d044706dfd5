"""The policy engine: runs the check chain on a proposed tool call and returns a typed decision.

Fails closed: a check that raises, or a chain that never assessed the risk, yields a deny. A state
database that is away (StateUnavailable) yields no decision at all: it is raised, and nothing runs.

`decide` previews a decision and changes nothing. `authorize` is the real thing: for an allow it
reserves the call against the spend and rate limits (atomically, in the ledger) and issues the
signed permit an executor needs; `settle` commits or releases the reservation afterwards. An
approved action goes through `authorize` again with the digest the approver saw: the approval
satisfies `require_approval` blocks (high risk, or a limit configured to ask), any deny still denies.

Autonomy: every decision reads the class's mode once (`mode`, from the `AutonomyStore` if the
engine has one, else the policy's `initial_mode`) and applies it after the check chain
(`checks.autonomy_mode`): denies win, a write in shadow mode is `propose` (no permit: it can only
be dry-run), in supervised mode every write needs approval, in autonomous mode high risk still
does. The mode is on the decision and in its reasons. A class the policy does not list, or a store
that cannot be read, counts as supervised.

Reload: `reload(config)` swaps the policy in one assignment; a decision reads the policy once at
its start, so it is made wholly under one version, recorded on the decision. Every decision is
made under the policy current at decision time, in-flight cases included: they are re-checked at
each step (and an approved action again at approval time), so tightening applies at once; a
case's earlier decisions keep the versions they were made under. Why not let a case keep its
starting version: a policy is usually tightened because something is going wrong, and a long or
paused case would otherwise go on acting under the rules being withdrawn. A permit issued before
a reload stays valid until it expires (`limits.permit_ttl_s`, a minute by default); counters in
the ledger carry over, since they count what happened, not the rules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from opsagent.errors import AutonomyError, StateUnavailable, ToolError
from opsagent.policy.checks import DEFAULT_CHECKS, Check, CheckContext, CheckResult, autonomy_mode, check_name
from opsagent.policy.config import PolicyConfig, check_read_ref
from opsagent.policy.ledger import ActionKey, SpendLedger
from opsagent.policy.limits import LimitExceeded
from opsagent.policy.modes import FAIL_CLOSED, Mode, ModeSource
from opsagent.policy.permits import PermitSigner, PermitVerifier, issue_permit, process_permit_key
from opsagent.policy.records import Permit, PolicyDecision, ToolCallRequest, args_digest

if TYPE_CHECKING:
    from opsagent.tools.registry import ToolRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Current:
    """One policy version and what is derived from it; swapped whole on reload."""

    config: PolicyConfig
    version: str
    validators: dict[str, Any] = field(default_factory=dict)  # tool name -> jsonschema validator


class PolicyEngine:
    """Decides allow / require_approval / deny for every tool call the planner proposes."""

    def __init__(
        self, config: PolicyConfig, registry: ToolRegistry, *, checks: Sequence[Check] = DEFAULT_CHECKS,
        ledger: SpendLedger | None = None, permit_key: PermitSigner | None = None,
        clock: Callable[[], float] = time.time, autonomy: ModeSource | None = None,
    ) -> None:
        """`ledger`: the cluster's counters (default: in memory, this process only). `permit_key`:
        the policy's private signing key, which never leaves it (default: OPSAGENT_PERMIT_SIGNING_KEY
        or a per-process key); executors get `verifier`, its public half.
        `autonomy`: the classes' modes (default: none, each class in its policy's `initial_mode`);
        classes it has no mode for get their `initial_mode` recorded."""
        self._current = _Current(config, config.version)  # the config is frozen: digest it once
        self.registry = registry
        self.checks = tuple(checks)
        self.ledger = ledger if ledger is not None else SpendLedger()
        self._signer = permit_key if permit_key is not None else process_permit_key()
        self.verifier: PermitVerifier = self._signer.verifier()
        self.clock = clock
        self.autonomy = autonomy
        self._seed(config)

    @property
    def config(self) -> PolicyConfig:
        return self._current.config

    @property
    def version(self) -> str:
        return self._current.version

    def reload(self, config: PolicyConfig) -> str:
        """Make `config` the policy for every decision from now on; returns its version.
        A class new to the autonomy store starts in its `initial_mode`; the others keep theirs."""
        self._current = _Current(config, config.version)
        self._seed(config)
        return config.version

    def mode(self, exception_type: str, config: PolicyConfig | None = None) -> Mode:
        """The class's autonomy mode now. A class the policy does not list, or a store that cannot
        be read, is supervised (never more); only a state database that is away raises
        (StateUnavailable: no decision is made on a guess, the caller waits and asks again)."""
        class_policy = (config or self.config).classes.get(exception_type)
        if class_policy is None:
            return FAIL_CLOSED
        if self.autonomy is None:
            return class_policy.initial_mode
        try:
            return Mode(self.autonomy.mode(exception_type, class_policy.initial_mode))
        except StateUnavailable:
            raise
        except Exception:  # noqa: BLE001 - fail closed
            return FAIL_CLOSED

    def _seed(self, config: PolicyConfig) -> None:
        seed = getattr(self.autonomy, "seed", None)
        if seed is None:
            return
        try:
            seed(config)
        except AutonomyError as err:  # decisions still fail closed (supervised) on this store
            log.error("cannot record the initial autonomy modes: %s", err)

    def decide(self, request: ToolCallRequest) -> PolicyDecision:
        """What the policy would decide now, changing nothing (no reservation, no permit)."""
        return self._run(self._current, request, self.clock(), approved_by=None)[0]

    def authorize(
        self, request: ToolCallRequest, *, approved_digest: str | None = None, approved_by: str | None = None
    ) -> PolicyDecision:
        """Decide; for an allow, reserve against the limits and attach a permit.

        `approved_digest`: a human approved the action with this arguments digest (the caller
        checked the approval); it must be this request's, and then require_approval blocks pass.
        """
        current, now = self._current, self.clock()
        digest = args_digest(request.tool, request.args)
        if approved_digest is not None and approved_digest != digest:
            return PolicyDecision(
                verdict="deny", risk=None, checks=[], policy_version=current.version, args_digest=digest,
                reasons=["the approval was for other arguments than these; the action needs a new approval"],
                mode=self.mode(request.exception_type, current.config),
            )
        approved = None if approved_digest is None else (approved_by or "an approver")
        decision, ctx = self._run(current, request, now, approved_by=approved)
        if decision.verdict != "allow":
            return decision
        limits_config = current.config.limits
        expires = now + limits_config.permit_ttl_s
        if ctx.reservation is not None:
            entry, found = ctx.reservation
            try:
                usages = self.ledger.reserve(
                    entry, found, now=now, hold_until=expires + limits_config.hold_grace_s,
                    approved=approved is not None,
                )
            except LimitExceeded as err:  # another call took the budget since the check
                blocked = "deny" if err.on_exceed == "deny" else "require_approval"
                return decision.model_copy(update={
                    "verdict": blocked, "risk": decision.risk if blocked != "deny" else None,
                    "reasons": [str(err)], "limits": err.consulted,
                })
            except StateUnavailable:  # no decision: the caller waits for the database and asks again
                raise
            except Exception as err:  # noqa: BLE001 - fail closed: no counted budget, no permit
                return decision.model_copy(update={
                    "verdict": "deny", "risk": None, "reasons": [f"limits could not be counted: {err}"],
                })
            decision = decision.model_copy(update={"limits": usages})
        permit = issue_permit(
            tool=request.tool, args_digest=digest, case_id=request.case_id, step=request.step,
            policy_version=current.version, key=self._signer, ttl_s=limits_config.permit_ttl_s, now=now,
        )
        return decision.model_copy(update={"permit": permit})

    def settle(
        self, permit: Permit, *, executed: bool
    ) -> Literal["committed", "late", "released", "untracked"]:
        """After the call: `executed` (it ran, or may have) commits its reservation, else releases it.

        Raises PermitError for a permit this policy did not sign.
        """
        self.verifier.verify_signature(permit)
        key = ActionKey(permit.case_id, permit.step, permit.args_digest)
        if executed:
            return self.ledger.commit(key, now=self.clock())
        return "released" if self.ledger.release(key) else "untracked"

    def _run(
        self, current: _Current, request: ToolCallRequest, now: float, *, approved_by: str | None
    ) -> tuple[PolicyDecision, CheckContext]:
        """Run the checks in order; the first block decides, otherwise allow at the assessed risk;
        then the class's autonomy mode applies to whatever was not denied."""
        mode = self.mode(request.exception_type, current.config)
        if mode == Mode.shadow and request.proposed:  # a proposal's preview stands in for its result
            request = request.model_copy(update={"observations": {**request.observations, **request.proposed}})
        ctx = CheckContext(current.config, self.registry, current.validators, ledger=self.ledger, now=now,
                           approved=approved_by is not None, mode=mode,
                           proposed=frozenset(request.proposed) if mode == Mode.shadow else frozenset())
        ran: list[str] = []
        waived: list[str] = []

        def decision(verdict: str, risk: str | None, reasons: list[str]) -> tuple[PolicyDecision, CheckContext]:
            return PolicyDecision(
                verdict=verdict,
                risk=risk,
                reasons=reasons,
                checks=ran,
                policy_version=current.version,
                args_digest=args_digest(request.tool, request.args),
                limits=ctx.limits,
                mode=mode,
            ), ctx

        held: CheckResult | None = None
        for check in self.checks:
            name = check_name(check)
            ran.append(name)
            try:
                result = check(request, ctx)
            except StateUnavailable:  # the limits cannot be read: no decision at all, not a deny
                raise
            except Exception as err:  # noqa: BLE001 - fail closed on any crash
                return decision("deny", None, [f"check {name} failed: {type(err).__name__}: {err}"])
            if result is None:
                continue
            if result.verdict not in ("deny", "require_approval") or result.risk not in (None, "low", "high"):
                return decision("deny", None, [f"check {name} returned an invalid block: {result!r}"])
            if result.verdict == "require_approval" and approved_by is not None:
                waived.append(result.reason)
                continue
            if result.verdict == "deny":
                return decision("deny", result.risk, [result.reason])
            held = result
            break
        if held is not None:
            verdict, risk, reasons = held.verdict, held.risk, [held.reason]
        elif ctx.risk is None:
            return decision("deny", None, ["no check assessed the risk of this call"])
        else:
            verdict, risk = "allow", ctx.risk
            reason = f"{request.tool} is {ctx.risk} risk for {request.exception_type}"
            reasons = [f"approved by {approved_by}", *(waived or [reason])] if approved_by else [reason]
        ran.append("autonomy_mode")
        try:
            moded = autonomy_mode(request, ctx, verdict)
        except Exception as err:  # noqa: BLE001 - fail closed on any crash
            return decision("deny", None, [f"check autonomy_mode failed: {type(err).__name__}: {err}"])
        if moded is None:
            return decision(verdict, risk, [*reasons, f"{request.exception_type} is in {mode.value} mode"])
        if moded.verdict == "deny":
            return decision("deny", None, [moded.reason])
        return decision(moded.verdict, moded.risk or risk, [moded.reason, *reasons])

    def allowed_tools(self, exception_type: str) -> list[str]:
        """The class's allowlist, limited to tools the registry knows (for the planner's schema)."""
        class_policy = self.config.classes.get(exception_type)
        if class_policy is None:
            return []
        return [name for name in class_policy.tools if self._registered(name)]

    def problems(self) -> list[str]:
        """Mismatches between the policy and the registry (listed tool missing, unknown argument,
        a cross-record constraint on a read the class can never make).

        Each one would deny at run time; call this at startup or in CI to catch typos early.
        """
        found = []
        for class_name, class_policy in self.config.classes.items():
            for tool, tool_policy in class_policy.tools.items():
                if not self._registered(tool):
                    found.append(f"{class_name}: tool {tool!r} is not in the registry")
                    continue
                known = set(self.registry.get(tool).parameters.get("properties", {}))
                for arg in sorted(tool_policy.named_args() - known):
                    found.append(f"{class_name}: {tool} has no argument {arg!r}")
                for ref in sorted(tool_policy.read_refs()):
                    source = check_read_ref(ref)[0]
                    if source not in class_policy.tools:
                        found.append(f"{class_name}: {tool} compares with {ref}, but {source} is not allowed")
        return found

    def _registered(self, name: str) -> bool:
        try:
            self.registry.get(name)
        except ToolError:
            return False
        return True

