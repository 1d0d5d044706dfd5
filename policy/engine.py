"""The policy engine: runs the check chain on a proposed tool call and returns a typed decision.

Fails closed: a check that raises, or a chain that never assessed the risk, yields a deny.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from opsagent.errors import ToolError
from opsagent.policy.checks import DEFAULT_CHECKS, Check, CheckContext, check_name
from opsagent.policy.config import PolicyConfig
from opsagent.policy.records import PolicyDecision, ToolCallRequest, args_digest

if TYPE_CHECKING:
    from opsagent.tools.registry import ToolRegistry


class PolicyEngine:
    """Decides allow / require_approval / deny for every tool call the planner proposes."""

    def __init__(
        self, config: PolicyConfig, registry: ToolRegistry, *, checks: Sequence[Check] = DEFAULT_CHECKS
    ) -> None:
        self.config = config
        self.registry = registry
        self.checks = tuple(checks)
        self.version = config.version  # the config is frozen: digest it once
        self._validators: dict[str, Any] = {}

    def decide(self, request: ToolCallRequest) -> PolicyDecision:
        """Run the checks in order; the first block decides, otherwise allow at the assessed risk."""
        ctx = CheckContext(self.config, self.registry, self._validators)
        ran: list[str] = []

        def decision(verdict: str, risk: str | None, reasons: list[str]) -> PolicyDecision:
            return PolicyDecision(
                verdict=verdict,
                risk=risk,
                reasons=reasons,
                checks=ran,
                policy_version=self.version,
                args_digest=args_digest(request.tool, request.args),
            )

        for check in self.checks:
            name = check_name(check)
            ran.append(name)
            try:
                result = check(request, ctx)
            except Exception as err:  # noqa: BLE001 - fail closed on any crash
                return decision("deny", None, [f"check {name} failed: {type(err).__name__}: {err}"])
            if result is None:
                continue
            if result.verdict not in ("deny", "require_approval") or result.risk not in (None, "low", "high"):
                return decision("deny", None, [f"check {name} returned an invalid block: {result!r}"])
            return decision(result.verdict, result.risk, [result.reason])
        if ctx.risk is None:
            return decision("deny", None, ["no check assessed the risk of this call"])
        return decision("allow", ctx.risk, [f"{request.tool} is {ctx.risk} risk for {request.exception_type}"])

    def allowed_tools(self, exception_type: str) -> list[str]:
        """The class's allowlist, limited to tools the registry knows (for the planner's schema)."""
        class_policy = self.config.classes.get(exception_type)
        if class_policy is None:
            return []
        return [name for name in class_policy.tools if self._registered(name)]

    def problems(self) -> list[str]:
        """Mismatches between the policy and the registry (listed tool missing, unknown argument).

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
        return found

    def _registered(self, name: str) -> bool:
        try:
            self.registry.get(name)
        except ToolError:
            return False
        return True
