"""Reload: every decision is made under the policy current at decision time, and records its version."""

from __future__ import annotations

from opsagent.policy import DEFAULT_CHECKS, PolicyEngine, verify_permit


def test_reload_applies_to_the_next_decision(billing_policy, registry, credit, clock) -> None:
    loose, tight = billing_policy(), billing_policy(per_action=50)
    engine = PolicyEngine(loose, registry, clock=clock)
    before = engine.authorize(credit(step=1, amount=100))
    assert engine.reload(tight) == tight.version == engine.version != loose.version
    after = engine.authorize(credit(step=2, amount=100))
    assert (before.verdict, before.policy_version) == ("allow", loose.version)
    assert (after.verdict, after.policy_version) == ("deny", tight.version)
    assert engine.config is tight


def test_a_held_action_is_rechecked_under_the_new_policy_when_approved(
    billing_policy, registry, credit
) -> None:
    engine = PolicyEngine(billing_policy(), registry)
    held = engine.authorize(credit(amount=250))
    assert held.verdict == "require_approval"
    engine.reload(billing_policy(per_action=200))  # tightened while the case waited
    approved = engine.authorize(credit(amount=250), approved_digest=held.args_digest, approved_by="alice")
    assert approved.verdict == "deny" and "250 would exceed the limit of 200" in approved.reasons[0]


def test_counters_carry_over_a_reload(billing_policy, registry, credit, clock) -> None:
    engine = PolicyEngine(billing_policy(), registry, clock=clock)
    for i in range(3):
        assert engine.authorize(credit(case_id=f"C{i}", amount=200)).verdict == "allow"
    engine.reload(billing_policy(per_day=700))
    assert engine.authorize(credit(case_id="C9", amount=101)).reasons == [
        "daily spend on billing_issue_credit for billing_dispute (EUR): 701 would exceed the limit of 700"
    ]


def test_a_decision_is_made_wholly_under_one_version(billing_policy, registry, credit) -> None:
    loose, tight = billing_policy(), billing_policy(per_action=1)
    engine: PolicyEngine

    def reload_mid_decision(request, ctx):
        engine.reload(tight)  # another thread swaps the policy while this decision runs
        return None

    engine = PolicyEngine(loose, registry, checks=[reload_mid_decision, *DEFAULT_CHECKS])
    decision = engine.authorize(credit(amount=100))
    assert (decision.verdict, decision.policy_version) == ("allow", loose.version)
    assert decision.permit.policy_version == loose.version
    assert engine.version == tight.version


def test_a_permit_issued_before_a_reload_lasts_until_it_expires(
    billing_policy, registry, credit, clock
) -> None:
    engine = PolicyEngine(billing_policy(), registry, clock=clock)
    permit = engine.authorize(credit(amount=100)).permit
    engine.reload(billing_policy(per_action=1))
    args = credit(amount=100).args
    verify_permit(permit, "billing_issue_credit", args, "CASE-1", 1, engine.verifier, clock.now + 59)
