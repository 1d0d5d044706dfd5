"""Properties of spend limits under random sequences of actions, retries, settlements and time.

- no sequence pushes a day's recorded spend (per tool and class, and cluster-wide) or a case's
  spend above its limit;
- a retry of an action that counts never changes any total;
- the ledger's totals always equal a simple model's: each distinct action counted at most once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import event, given, settings
from hypothesis import strategies as st

from opsagent.policy import PolicyEngine, args_digest
from opsagent.policy.ledger import utc_day

PER_CASE, PER_DAY, CLUSTER_DAY, TTL, GRACE = 250, 400, 450, 60, 240

amounts = st.sampled_from([60.0, 120.0, 199.99]) | st.decimals("0.01", "200", places=2).map(float)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("new"), st.integers(0, 4), amounts),  # case index, amount
        st.tuples(st.just("retry"), st.integers(0, 40)),  # index into earlier actions
        st.tuples(st.just("settle"), st.integers(0, 40), st.booleans()),  # executed or not
        st.tuples(st.just("tick"), st.sampled_from([1, 30, 200, 400, 3600, 43_200])),
    ),
    min_size=4,
    max_size=40,
)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_779_969_600.0  # 2026-05-28 12:00 UTC

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Model:
    """Expected ledger state: key -> [amount, state, hold_until, day]."""

    rows: dict[tuple, list] = field(default_factory=dict)

    def counts(self, key: tuple, now: float) -> bool:
        _, state, hold, _ = self.rows[key]
        return state == "committed" or (state == "reserved" and hold > now)

    def spent(self, now: float, day: str | None = None) -> float:
        return sum(r[0] for k, r in self.rows.items() if self.counts(k, now) and day in (None, r[3]))


@settings(max_examples=150, deadline=None)
@given(sequence=ops)
def test_spend_never_exceeds_its_limits_and_retries_never_count_twice(
    billing_policy, registry, credit, sequence
) -> None:
    clock = _Clock()
    engine = PolicyEngine(billing_policy(per_action=300, per_case=PER_CASE, per_day=PER_DAY,
                                         cluster_day=CLUSTER_DAY), registry, clock=clock)
    ledger, model = engine.ledger, Model()
    actions: list = []  # (request, permit or None)
    step = 0
    for op in sequence:
        now = clock.now
        if op[0] == "tick":
            clock.advance(op[1])
            continue
        if op[0] == "settle":
            if not actions:
                continue
            request, permit = actions[op[1] % len(actions)]
            if permit is None:
                continue
            key = (permit.case_id, permit.step, permit.args_digest)
            if key in model.rows and not model.counts(key, now) and op[2]:
                continue  # a late commit is recorded whatever the limits say: outside the guarantee
            engine.settle(permit, executed=op[2])
            if key in model.rows:
                row = model.rows[key]
                if op[2]:
                    row[1] = "committed"
                elif row[1] == "reserved":
                    row[1] = "released"
        else:
            if op[0] == "new":
                step += 1
                request = credit(case_id=f"C{op[1]}", step=step, amount=op[2])
            elif actions:
                request = actions[op[1] % len(actions)][0]
            else:
                continue
            key = (request.case_id, request.step, args_digest(request.tool, request.args))
            counted_before = key in model.rows and model.counts(key, now)
            totals_before = ledger.spent(now=now)
            decision = engine.authorize(request)
            event(f"{op[0]}: {decision.verdict}{' (counting)' if counted_before else ''}")
            if decision.verdict == "allow":
                if counted_before:
                    assert ledger.spent(now=now) == totals_before  # a retry changes nothing
                    model.rows[key][2] = max(model.rows[key][2], now + TTL + GRACE)
                else:
                    model.rows[key] = [request.args["amount"], "reserved", now + TTL + GRACE, utc_day(now)]
            else:
                assert decision.verdict == "deny" and "would exceed the limit" in decision.reasons[0]
                assert decision.permit is None
            actions.append((request, decision.permit))
        for day in {utc_day(now), utc_day(clock.now)}:
            assert ledger.spent(now=clock.now, day=day) <= CLUSTER_DAY
            assert ledger.spent(now=clock.now, day=day, tool="billing_issue_credit",
                                exception_type="billing_dispute") <= PER_DAY
        for case in range(5):
            assert ledger.spent(now=clock.now, case_id=f"C{case}") <= PER_CASE
        assert abs(ledger.spent(now=clock.now) - model.spent(clock.now)) < 1e-6
