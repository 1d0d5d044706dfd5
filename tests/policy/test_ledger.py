"""The SQLite ledger on its own: atomic, durable, idempotent per action, reservations lapse."""

from __future__ import annotations

import threading

import pytest

from opsagent.policy import ActionKey, LedgerEntry, LimitExceeded, SpendLedger
from opsagent.policy.ledger import utc_day
from opsagent.policy.limits import Limit

NOW = 1_779_969_600.0  # 2026-05-28 12:00 UTC
DAY = Limit("daily spend (EUR)", "spend", "day", 1000, "deny")
RATE = Limit("calls per minute", "calls", "minute", 3, "deny")


def entry(case: str = "C1", step: int = 1, amount: float = 100, digest: str = "d") -> LedgerEntry:
    return LedgerEntry(ActionKey(case, step, digest), "billing_dispute", "credit", amount, "EUR")


def reserve(ledger: SpendLedger, e: LedgerEntry, now: float = NOW, limits=(DAY,), hold: float = 300):
    return ledger.reserve(e, list(limits), now=now, hold_until=now + hold)


def test_a_retried_action_counts_once(tmp_path) -> None:
    ledger = SpendLedger(tmp_path / "l.sqlite")
    first = reserve(ledger, entry(amount=400))
    again = reserve(ledger, entry(amount=400), now=NOW + 5)
    assert first == again and first[0].value == 400
    assert ledger.spent(now=NOW + 5) == 400
    assert reserve(ledger, entry(step=2, amount=400))[0].value == 800  # another step is another action


def test_totals_survive_a_new_instance_on_the_same_file(tmp_path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = SpendLedger(path)
    reserve(ledger, entry("C1", amount=600))
    ledger.commit(entry("C1").key, now=NOW)
    ledger.close()
    reopened = SpendLedger(path)
    assert reopened.spent(now=NOW + 3600, day=utc_day(NOW)) == 600
    with pytest.raises(LimitExceeded) as err:
        reserve(reopened, entry("C2", amount=401))
    assert (err.value.what, err.value.value, err.value.limit) == ("daily spend (EUR)", 1001, 1000)
    assert err.value.consulted[0].exceeded
    assert reopened.state(entry("C2").key) is None  # a refused action is not recorded


def test_a_lapsed_reservation_frees_its_budget_and_counts_once_if_reserved_again() -> None:
    ledger = SpendLedger()
    reserve(ledger, entry("C1", amount=700), hold=100)
    with pytest.raises(LimitExceeded):
        reserve(ledger, entry("C2", amount=700), now=NOW + 99)
    reserve(ledger, entry("C2", amount=700), now=NOW + 100)  # C1's hold lapsed
    with pytest.raises(LimitExceeded):
        reserve(ledger, entry("C1", amount=700), now=NOW + 101)  # C1 again competes like anyone
    assert ledger.spent(now=NOW + 101) == 700


def test_release_and_commit() -> None:
    ledger = SpendLedger()
    for step in (1, 2, 3):
        reserve(ledger, entry(step=step, amount=100))
    assert ledger.release(entry(step=1).key) and not ledger.release(entry(step=1).key)
    assert ledger.commit(entry(step=2).key, now=NOW + 1) == "committed"
    assert not ledger.release(entry(step=2).key)  # committed money stays counted
    assert ledger.commit(entry(step=9).key, now=NOW) == "untracked"
    assert ledger.commit(entry(step=1).key, now=NOW + 1) == "late"  # released, then ran after all
    assert ledger.spent(now=NOW + 1) == 300
    assert ledger.spent(now=NOW + 10_000) == 200  # step 3 was never settled and lapsed
    assert [ledger.state(entry(step=s).key) for s in (1, 2, 3)] == ["committed", "committed", "reserved"]


def test_calls_per_minute_counts_actions_in_the_last_60_seconds() -> None:
    ledger = SpendLedger()
    for step, at in enumerate((0, 20, 40)):
        reserve(ledger, entry(step=step, amount=0), now=NOW + at, limits=[RATE])
    with pytest.raises(LimitExceeded, match="calls per minute: 4 would exceed the limit of 3"):
        reserve(ledger, entry(step=9, amount=0), now=NOW + 59, limits=[RATE])
    assert reserve(ledger, entry(step=9, amount=0), now=NOW + 60, limits=[RATE])[0].value == 3


def test_usage_is_read_only() -> None:
    ledger = SpendLedger()
    assert ledger.usage(entry(amount=250), [DAY], now=NOW)[0].value == 250
    assert ledger.spent(now=NOW) == 0 and ledger.state(entry().key) is None


def test_sums_are_exact() -> None:
    ledger = SpendLedger()
    limit = Limit("tiny", "spend", "day", 0.3, "deny")
    for step in range(3):
        reserve(ledger, entry(step=step, amount=0.1), limits=[limit])  # 0.1 + 0.1 + 0.1 > 0.3 in floats
    with pytest.raises(LimitExceeded):
        reserve(ledger, entry(step=3, amount=0.01), limits=[limit])


def test_scopes_filter_by_tool_class_case_and_day() -> None:
    ledger = SpendLedger()
    per_case = Limit("case", "spend", "case", 150, "deny", tool="credit", exception_type="billing_dispute")
    reserve(ledger, entry("C1", amount=100), limits=[per_case])
    other_tool = LedgerEntry(ActionKey("C1", 2, "d"), "billing_dispute", "refund", 100, "EUR")
    reserve(ledger, other_tool, limits=[])
    credit_again = LedgerEntry(ActionKey("C1", 3, "d"), "billing_dispute", "credit", 50)
    assert reserve(ledger, credit_again, limits=[per_case])[0].value == 150  # the refund does not count
    with pytest.raises(LimitExceeded):
        reserve(ledger, entry("C1", step=4, amount=1), limits=[per_case])
    assert reserve(ledger, entry("C2", amount=100), limits=[per_case])[0].value == 100
    assert reserve(ledger, entry("C3", amount=900), now=NOW + 86400)[0].value == 900  # the next day


def test_concurrent_reservations_from_two_instances_never_overspend(tmp_path) -> None:
    path = tmp_path / "l.sqlite"
    ledgers = [SpendLedger(path), SpendLedger(path)]
    outcomes: list[bool] = []

    def attempt(i: int) -> None:
        try:
            reserve(ledgers[i % 2], entry(f"C{i}", amount=100))
            outcomes.append(True)
        except LimitExceeded:
            outcomes.append(False)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(True) == 10 and ledgers[0].spent(now=NOW) == 1000
