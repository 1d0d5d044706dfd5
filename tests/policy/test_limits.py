"""Spending and rate limits through PolicyEngine: what/value/limit in every refusal, the limits
consulted on every decision, reserve on allow, settle, lapse, durability."""

from __future__ import annotations

import pytest

from opsagent.errors import ConfigError
from opsagent.policy import (
    LimitExceeded,
    LimitUsage,
    PolicyConfig,
    PolicyEngine,
    SpendLedger,
    args_digest,
)
from opsagent.policy.checks import limits_for

CREDIT = "billing_issue_credit"


@pytest.fixture
def engine(billing_policy, registry, clock):
    return PolicyEngine(billing_policy(), registry, clock=clock)


def spent(engine, **kw) -> float:
    return engine.ledger.spent(now=engine.clock(), **kw)


def test_allow_records_every_limit_consulted(engine, credit) -> None:
    decision = engine.authorize(credit(amount=100))
    assert (decision.verdict, decision.risk) == ("allow", "low") and decision.permit is not None
    assert decision.limits == [
        LimitUsage(what=f"spend per action on {CREDIT} (EUR)", value=100, limit=300, exceeded=False),
        LimitUsage(what=f"spend on {CREDIT} in case CASE-1 (EUR)", value=100, limit=400, exceeded=False),
        LimitUsage(what=f"daily spend on {CREDIT} for billing_dispute (EUR)", value=100, limit=800,
                   exceeded=False),
        LimitUsage(what="daily spend, whole cluster (EUR)", value=100, limit=1000, exceeded=False),
    ]
    assert spent(engine) == 100


def test_per_action_limit_denies_naming_what_value_and_limit(engine, credit) -> None:
    decision = engine.authorize(credit(amount=350))  # also high risk: the hard limit denies first
    assert (decision.verdict, decision.risk, decision.permit) == ("deny", None, None)
    assert decision.reasons == [f"spend per action on {CREDIT} (EUR): 350 would exceed the limit of 300"]
    assert decision.checks[-1] == "within_limits"
    assert decision.limits[0].exceeded and not decision.limits[1].exceeded
    assert spent(engine) == 0


def test_per_case_limit(engine, credit) -> None:
    verdicts = [engine.authorize(credit(step=s, amount=150)).verdict for s in (1, 2, 3)]
    assert verdicts == ["allow", "allow", "deny"]
    assert engine.authorize(credit(step=3, amount=150)).reasons == [
        f"spend on {CREDIT} in case CASE-1 (EUR): 450 would exceed the limit of 400"
    ]
    assert engine.authorize(credit(case_id="CASE-2", amount=150)).verdict == "allow"  # another case


def test_per_day_limit_across_cases_resets_the_next_utc_day(engine, credit, clock) -> None:
    verdicts = [engine.authorize(credit(case_id=f"C{i}", amount=150)).verdict for i in range(6)]
    assert verdicts == ["allow"] * 5 + ["deny"]
    assert "daily spend on billing_issue_credit for billing_dispute (EUR): 900 would exceed the limit of 800" \
        in engine.decide(credit(case_id="C5", amount=150)).reasons[0]
    for i in range(5):
        engine.settle(engine.authorize(credit(case_id=f"C{i}", amount=150)).permit, executed=True)
    clock.advance(12 * 3600)  # midnight UTC
    assert engine.authorize(credit(case_id="C5", amount=150)).verdict == "allow"


def test_cluster_daily_limit_spans_tools_and_classes(billing_policy, registry, clock, credit) -> None:
    config = billing_policy(per_day="null", per_case="null", cluster_day=500)
    engine = PolicyEngine(config, registry, clock=clock)
    assert engine.authorize(credit(case_id="A", amount=200)).verdict == "allow"
    assert engine.authorize(credit(case_id="B", amount=200)).verdict == "allow"
    decision = engine.authorize(credit(case_id="C", amount=101))
    assert decision.reasons == ["daily spend, whole cluster (EUR): 501 would exceed the limit of 500"]


@pytest.mark.parametrize(("override", "what"), [
    ({"tool_rate": 3}, f"calls per minute to {CREDIT} for billing_dispute"),
    ({"class_rate": 3}, "calls per minute for billing_dispute"),
    ({"cluster_rate": 3}, "calls per minute, whole cluster"),
])
def test_rate_limits(billing_policy, registry, clock, credit, override, what) -> None:
    engine = PolicyEngine(billing_policy(**override, per_case="null"), registry, clock=clock)
    for step in (1, 2, 3):
        assert engine.authorize(credit(step=step, amount=1)).verdict == "allow"
        clock.advance(10)
    decision = engine.authorize(credit(step=4, amount=1))
    assert decision.reasons == [f"{what}: 4 would exceed the limit of 3"]
    assert engine.authorize(credit(step=2, amount=1)).verdict == "allow"  # a retry is no new call
    clock.advance(31)  # the first call leaves the window
    assert engine.authorize(credit(step=4, amount=1)).verdict == "allow"


def test_reads_count_against_class_rate_but_not_spend(billing_policy, registry, clock, credit) -> None:
    engine = PolicyEngine(billing_policy(class_rate=2), registry, clock=clock)
    read = credit(tool="billing_get_invoice", args={"invoice_id": "INV-1"})
    assert engine.authorize(read).limits == [
        LimitUsage(what="calls per minute for billing_dispute", value=1, limit=2, exceeded=False)
    ]
    assert engine.authorize(read.model_copy(update={"step": 2})).verdict == "allow"
    assert engine.authorize(credit(step=3)).verdict == "deny"
    assert spent(engine) == 0


def test_on_exceed_require_approval_holds_and_an_approval_releases(
    billing_policy, registry, clock, credit
) -> None:
    engine = PolicyEngine(billing_policy(on_exceed="require_approval"), registry, clock=clock)
    assert engine.authorize(credit(case_id="A", step=1, amount=150)).verdict == "allow"
    over = credit(case_id="A", step=2, amount=260)
    held = engine.authorize(over)
    assert (held.verdict, held.risk, held.permit) == ("require_approval", "high", None)
    assert held.reasons == [f"spend on {CREDIT} in case A (EUR): 410 would exceed the limit of 400",
                            "billing_dispute is in autonomous mode"]
    assert spent(engine) == 150  # nothing reserved while held
    approved = engine.authorize(over, approved_digest=held.args_digest, approved_by="alice (apr-1)")
    assert approved.verdict == "allow" and approved.permit is not None
    assert approved.reasons[0] == "approved by alice (apr-1)"
    assert held.reasons[0] in approved.reasons  # what the approval overrode stays on record
    assert any(u.exceeded for u in approved.limits)
    assert spent(engine) == 410


def test_an_approval_does_not_lift_a_hard_limit(engine, credit) -> None:
    request = credit(amount=350)
    decision = engine.authorize(request, approved_digest=args_digest(CREDIT, request.args), approved_by="bob")
    assert decision.verdict == "deny" and "350 would exceed the limit of 300" in decision.reasons[0]


@pytest.mark.parametrize(("args", "why"), [
    ({"currency": "USD"}, "currency='USD': spend limits are in EUR and amounts are not converted"),
    ({"amount": -5}, "amount=-5 is outside"),
    ({"amount": 1e13}, "is outside"),
])
def test_spend_that_cannot_be_counted_is_denied(billing_policy, registry, credit, args, why) -> None:
    engine = PolicyEngine(billing_policy(per_action="null"), registry)
    request = credit(open_amount=1e14)
    decision = engine.decide(request.model_copy(update={"args": {**request.args, **args}}))
    assert decision.verdict == "deny" and why in decision.reasons[0]


def test_decide_previews_and_changes_nothing(engine, credit) -> None:
    for step in range(10):
        decision = engine.decide(credit(step=step, amount=100))
        assert decision.verdict == "allow" and decision.permit is None and decision.limits
    assert spent(engine) == 0


def test_a_retry_counts_once_and_gets_a_fresh_permit(engine, credit) -> None:
    first, again = engine.authorize(credit(amount=120)), engine.authorize(credit(amount=120))
    assert first.verdict == again.verdict == "allow"
    assert first.permit.nonce != again.permit.nonce
    assert first.limits == again.limits and spent(engine) == 120


def test_settle_commits_or_releases(engine, credit, clock) -> None:
    ran = engine.authorize(credit(step=1, amount=100)).permit
    skipped = engine.authorize(credit(step=2, amount=50)).permit
    assert engine.settle(ran, executed=True) == "committed"
    assert engine.settle(skipped, executed=False) == "released"
    assert spent(engine) == 100
    clock.advance(10 * 86400)
    assert spent(engine, day=None) == 100  # committed spend never lapses
    assert engine.settle(skipped, executed=False) == "untracked"


def test_an_unused_permit_stops_holding_budget_after_its_grace(engine, credit, clock) -> None:
    permit = engine.authorize(credit(amount=200)).permit
    assert permit.expires_at == clock.now + 60
    clock.advance(60 + 240 - 1)
    assert spent(engine) == 200
    clock.advance(1)
    assert spent(engine) == 0
    assert engine.settle(permit, executed=True) == "late"  # it ran after all: recorded anyway
    assert spent(engine) == 200


def test_totals_survive_a_restart_and_are_shared(billing_policy, registry, clock, credit, tmp_path) -> None:
    path = tmp_path / "ledger.sqlite"
    first = PolicyEngine(billing_policy(), registry, ledger=SpendLedger(path), clock=clock)
    for i in range(5):
        first.settle(first.authorize(credit(case_id=f"C{i}", amount=150)).permit, executed=True)
    first.ledger.close()
    restarted = PolicyEngine(billing_policy(), registry, ledger=SpendLedger(path), clock=clock)
    assert restarted.ledger.spent(now=clock.now) == 750
    assert restarted.authorize(credit(case_id="C9", amount=100)).verdict == "deny"
    assert restarted.authorize(credit(case_id="C9", amount=50)).verdict == "allow"


def test_a_budget_taken_between_check_and_reserve_denies(billing_policy, registry, credit, monkeypatch) -> None:
    engine = PolicyEngine(billing_policy(per_action=100), registry)
    monkeypatch.setattr(engine.ledger, "usage", lambda *a, **kw: [])  # the check sees room, but
    decision = engine.authorize(credit(amount=101))  # the atomic reservation checks again
    assert (decision.verdict, decision.permit) == ("deny", None)
    assert decision.reasons == [f"spend per action on {CREDIT} (EUR): 101 would exceed the limit of 100"]


def test_a_failing_ledger_fails_closed(engine, credit, monkeypatch) -> None:
    def broken(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(engine.ledger, "reserve", broken)
    decision = engine.authorize(credit())
    assert (decision.verdict, decision.permit) == ("deny", None)
    assert "limits could not be counted: disk full" in decision.reasons[0]
    monkeypatch.setattr(engine.ledger, "usage", broken)
    assert "check within_limits failed: OSError" in engine.decide(credit()).reasons[0]


def test_calls_without_limits_leave_no_trace(registry, make_request) -> None:
    config = PolicyConfig.from_yaml("classes: {weight_mismatch: {tools: {wms_get_shipment: {risk: low}}}}")
    engine = PolicyEngine(config, registry)
    decision = engine.authorize(make_request("wms_get_shipment"))
    assert decision.verdict == "allow" and decision.limits == [] and decision.permit is not None
    assert engine.settle(decision.permit, executed=True) == "untracked"


def test_limits_for_lists_the_applicable_limits(billing_policy, credit) -> None:
    found, amount, currency = limits_for(billing_policy(tool_rate=5, class_rate=9), credit(amount=12.5))
    assert (amount, currency) == (12.5, "EUR")
    assert [(x.kind, x.window, x.limit, x.tool, x.exception_type) for x in found] == [
        ("spend", "action", 300, CREDIT, "billing_dispute"),
        ("spend", "case", 400, CREDIT, "billing_dispute"),
        ("spend", "day", 800, CREDIT, "billing_dispute"),
        ("spend", "day", 1000, None, None),
        ("calls", "minute", 5, CREDIT, "billing_dispute"),
        ("calls", "minute", 9, None, "billing_dispute"),
    ]


def test_limit_exceeded_carries_what_value_and_limit() -> None:
    err = LimitExceeded("daily spend (EUR)", 1200.5, 1000, on_exceed="require_approval")
    assert (err.what, err.value, err.limit) == ("daily spend (EUR)", 1200.5, 1000)
    assert err.on_exceed == "require_approval"
    assert str(err) == "daily spend (EUR): 1200.5 would exceed the limit of 1000"


@pytest.mark.parametrize("bad", [
    "limits: {on_exceed: warn}\nclasses: {}",
    "limits: {spend_per_day: -1}\nclasses: {}",
    "limits: {permit_ttl_s: 0}\nclasses: {}",
    "classes: {c: {tools: {t: {risk: low, spend: {per_day: 5}}}}}",  # no amount argument
    "classes: {c: {tools: {t: {risk: low, spend: {arg: amount, per_week: 5}}}}}",
    "classes: {c: {calls_per_minute: -1, tools: {}}}",
])
def test_invalid_limit_settings_are_config_errors(bad) -> None:
    with pytest.raises(ConfigError):
        PolicyConfig.from_yaml(bad)


def test_limits_are_part_of_the_version(billing_policy) -> None:
    assert billing_policy().version != billing_policy(per_day=799).version


def test_spend_arguments_must_exist(billing_policy, registry) -> None:
    config = PolicyConfig.from_yaml(
        "classes: {c: {tools: {billing_issue_credit: {risk: low, spend: {arg: amt, currency_arg: cur}}}}}"
    )
    assert PolicyEngine(config, registry).problems() == [
        "c: billing_issue_credit has no argument 'amt'",
        "c: billing_issue_credit has no argument 'cur'",
    ]
    assert PolicyEngine(billing_policy(), registry).problems() == []
