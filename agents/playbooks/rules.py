"""Standard operating procedure rules of a playbook: candidates the evidence already rules out.

A playbook's goal says, in words, what the evidence decides (a verified address is corrected,
not handed to customer service). A rule writes one such sentence as data: once the case has
read `read` and the facts pinned from those reads equal `when`, the steps in `withhold` are not
offered, until a step of `until` (if any) has succeeded: the SOP's "then". The model then chooses among what is left, or, when one step is left, the rule decides
it alone (traced `decided_by = rule`).

Rules only narrow the planner's choice; the policy still checks every call. They never leave a
case stuck: after any setback (a step denied, failed, or rejected by a human) no rule withholds the
escalation, so a human can always take the case; after a human's rejection no rule applies at all
(the human has contradicted the SOP's reading of the evidence, so every step is offered again); and
a rule that would withhold every candidate withholds nothing. A denial or a failure leaves the
evidence as it was read, so the rest of what it rules out stays ruled out: a claim whose damage the
carrier recorded is not handed to customer service because the day's credit budget ran out.
Rules are reviewed like policy: typed, validated at load against the playbook's own evidence
and tools (`Playbook._check_rules`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field, field_validator

from opsagent.agents.case import Case, Step

FINISHES = ("finish:resolved", "finish:escalated")


class SopRule(BaseModel):
    """One SOP sentence: when the pinned evidence says so, these steps are not offered."""

    model_config = {"extra": "forbid", "frozen": True}
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Short name, shown in reviews.")
    why: str = Field(min_length=3, description="The SOP sentence this rule writes down.")
    when: dict[str, list[str]] = Field(
        default_factory=dict, description="Evidence fact -> the values (as read) for which the rule "
        "applies; every fact named must be one the playbook pins from a read (`source`). A single "
        "value may be written without a list.")
    read: list[str] = Field(default_factory=list, description="Tools that must have succeeded in the "
                            "case before the rule applies (a failed read keeps every step offered).")
    withhold: list[str] = Field(min_length=1, description="Tools, or `finish:resolved` / "
                                "`finish:escalated`, not offered while the rule applies.")
    until: list[str] = Field(default_factory=list, description="Tools whose success ends the rule: "
                             "the SOP's 'then' (e.g. withhold resolving the ticket until the void "
                             "has succeeded).")

    @field_validator("when", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: v if isinstance(v, list) else [v] for k, v in value.items()}
        return value

    @field_validator("when")
    @classmethod
    def _as_text(cls, value: dict[str, list[Any]]) -> dict[str, list[str]]:
        return {k: [str(v) for v in values] for k, values in value.items()}

    def applies(self, evidence: Mapping[str, Any], done: Mapping[str, Any]) -> bool:
        """The rule's reads succeeded, every fact of `when` was read as one of its values, and no
        step of `until` has succeeded yet."""
        return all(t in done for t in self.read) and not any(t in done for t in self.until) and all(
            k in evidence and str(evidence[k]) in values for k, values in self.when.items())


def setback(case: Case) -> bool:
    """A step of the case was denied, failed, or not approved by a human: the escalation is open."""
    return any(s.verdict == "deny" or s.failed or rejected(s) for s in case.steps)


def overruled(case: Case) -> bool:
    """A human did not approve a step of the case: every rule stands aside."""
    return any(rejected(s) for s in case.steps)


def rejected(step: Step) -> bool:
    """A held step a human did not approve."""
    return bool(step.verdict == "require_approval" and not step.executed and step.error)


def withheld_by(rules: Sequence[SopRule], decision: str, evidence: Mapping[str, Any],
                done: Mapping[str, Any]) -> SopRule | None:
    """The first rule that withholds `decision` (a tool name or `finish:<status>`), if any."""
    return next((r for r in rules if decision in r.withhold and r.applies(evidence, done)), None)
