"""Policy replicas sharing one state database (each with its own engine, as two processes would):
one daily limit is never overspent, one approval gets exactly one decision, a permit is used once.
Every check runs on SQLite and on a real PostgreSQL server; the `weakened` tests take the
database's mechanism away (the advisory lock, FOR UPDATE) and show the same check then fails."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from opsagent.errors import ApprovalError, PermitError
from opsagent.policy import ActionKey, LedgerEntry, LimitExceeded, SpendLedger
from opsagent.policy import approvals as approvals_module
from opsagent.policy import ledger as ledger_module
from opsagent.policy.approvals import ApprovalStatus, ApprovalStore
from opsagent.policy.identity import Identity, Role
from opsagent.policy.limits import Limit
from opsagent.policy.permit_uses import PermitUses
from opsagent.policy.records import Permit
from opsagent.policy.state import State

NOW = 1_779_969_600.0
DAY = Limit("daily spend (EUR)", "spend", "day", 100, "deny")
REPLICAS = 6


def _together(count: int, work: Callable[[int], None]) -> None:
    """Run `work(i)` for i < count in threads released at once; re-raise the first error."""
    barrier, errors = threading.Barrier(count), []

    def run(i: int) -> None:
        barrier.wait()
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _pause_after(module, name: str, parties: int) -> None:
    """Make `module.name` wait (up to 2 s) for `parties` callers after it returns: every replica
    then reads before any writes, unless the database makes them take turns (then the wait
    times out and each goes on alone)."""
    original = getattr(module, name)
    barrier = threading.Barrier(parties, timeout=2)

    def paused(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        finally:
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                pass

    setattr(module, name, paused)


def overspend(url: str) -> tuple[int, float]:
    """REPLICAS ledgers on one database reserve 30 each against a limit of 100 at once: how many
    reservations were granted and the spend recorded."""
    ledgers = [SpendLedger(State(url)) for _ in range(REPLICAS)]
    granted = []

    def reserve(i: int) -> None:
        try:
            ledgers[i].reserve(LedgerEntry(ActionKey(f"C{i}", 1, "d"), "billing_dispute", "credit", 30, "EUR"),
                               [DAY], now=NOW, hold_until=NOW + 300)
            granted.append(i)
        except LimitExceeded:
            pass

    _together(REPLICAS, reserve)
    spent = ledgers[0].spent(now=NOW)
    for ledger in ledgers:
        ledger.db.close()
    return len(granted), spent


def test_replicas_reserving_at_once_never_overspend_one_daily_limit(state_url, monkeypatch) -> None:
    monkeypatch.setattr(ledger_module, "_evaluate", ledger_module._evaluate)
    _pause_after(ledger_module, "_evaluate", REPLICAS)
    assert overspend(state_url) == (3, 90)


@pytest.mark.postgres
def test_weakened_without_the_ledger_lock_replicas_overspend(postgres_server, monkeypatch) -> None:
    """Demonstrates the check above can fail: the same race without the advisory lock."""
    monkeypatch.setattr(State, "lock", lambda self, conn, name: None)
    monkeypatch.setattr(ledger_module, "_evaluate", ledger_module._evaluate)
    _pause_after(ledger_module, "_evaluate", REPLICAS)
    granted, spent = overspend(postgres_server.new_database())
    assert granted == REPLICAS and spent == 30 * REPLICAS > DAY.limit


ALICE = Identity(name="alice", roles=frozenset({Role.approver}))
BOB = Identity(name="bob", roles=frozenset({Role.approver}))


def decisions(url: str) -> list[str]:
    """Two replicas decide one request at once, alice approving, bob rejecting: who won."""
    first, second = ApprovalStore(State(url)), ApprovalStore(State(url))
    held = first.request(case_id="case-1", exception_type="billing_dispute", step=2, tool="credit",
                         args={"amount": 50}, args_digest="d" * 64, risk="high", reasons=["over limit"],
                         policy_version="v1", preview=None)
    won: list[str] = []

    def decide(i: int) -> None:
        store, who = (first, ALICE) if i == 0 else (second, BOB)
        try:
            store.decide(held.approval_id, identity=who, approve=i == 0, args_digest="d" * 64,
                         reason=None if i == 0 else "not this one")
            won.append(who.name)
        except ApprovalError as exc:
            assert "is already" in str(exc)

    _together(2, decide)
    final = first.get(held.approval_id)
    if len(won) == 1:
        assert final.status == (ApprovalStatus.approved if won == ["alice"] else ApprovalStatus.rejected)
        assert final.approver == won[0]
    for store in (first, second):
        store.db.close()
    return won


def test_concurrent_approve_and_reject_exactly_one_wins(state_url, monkeypatch) -> None:
    monkeypatch.setattr(approvals_module, "_for_decision", approvals_module._for_decision)
    _pause_after(approvals_module, "_for_decision", 2)
    won = decisions(state_url)
    assert len(won) == 1, won


def test_one_approver_deciding_twice_at_once_records_one_decision(state_url, monkeypatch) -> None:
    """The approver's retry (its first answer lost) races the first decision on another replica:
    one decision is recorded, and both calls answer with it."""
    monkeypatch.setattr(approvals_module, "_for_decision", approvals_module._for_decision)
    _pause_after(approvals_module, "_for_decision", 2)
    stores = [ApprovalStore(State(state_url)), ApprovalStore(State(state_url))]
    held = stores[0].request(case_id="case-2", exception_type="billing_dispute", step=2, tool="credit",
                             args={"amount": 50}, args_digest="d" * 64, risk="high", reasons=["over limit"],
                             policy_version="v1", preview=None)
    answers: list = []
    _together(2, lambda i: answers.append(stores[i].decide(held.approval_id, identity=ALICE, approve=True,
                                                            args_digest="d" * 64)))
    recorded = stores[0].get(held.approval_id)
    assert recorded.status == ApprovalStatus.approved and answers == [recorded, recorded]
    for store in stores:
        store.db.close()


@pytest.mark.postgres
def test_weakened_without_for_update_both_decisions_win(postgres_server, monkeypatch) -> None:
    """Demonstrates the check above can fail: the request read without FOR UPDATE."""
    from sqlalchemy import select

    from opsagent.policy.state._schema import approvals

    def unlocked(conn, approval_id):
        return approvals_module._record(conn.execute(
            select(approvals).where(approvals.c.approval_id == approval_id)).one())

    monkeypatch.setattr(approvals_module, "_for_decision", unlocked)
    _pause_after(approvals_module, "_for_decision", 2)
    assert sorted(decisions(postgres_server.new_database())) == ["alice", "bob"]


def _permit(nonce: str) -> Permit:
    return Permit(nonce=nonce, case_id="case-1", step=3, tool="credit", args_digest="d" * 64,
                  issued_at=NOW, expires_at=NOW + 60, policy_version="v1", key_id="k" * 16, signature="s")


def test_a_permit_is_used_once_whichever_executor_claims_it(state_url) -> None:
    executors = [PermitUses(State(state_url)) for _ in range(4)]
    outcomes: list[str] = []

    def claim(i: int) -> None:
        try:
            outcomes.append(executors[i].claim(_permit("n-1"), None, now=NOW))
        except PermitError:
            outcomes.append("refused")

    _together(len(executors), claim)
    assert sorted(outcomes) == ["first", "refused", "refused", "refused"]
    assert executors[0].claim(_permit("n-2"), "idem-1", now=NOW) == "first"
    assert executors[1].claim(_permit("n-2"), "idem-1", now=NOW) == "retry"  # same call, same key
    with pytest.raises(PermitError, match="another idempotency key"):
        executors[2].claim(_permit("n-2"), "idem-2", now=NOW)
    with pytest.raises(PermitError, match="already sent once"):
        executors[3].claim(_permit("n-3"), None, now=NOW)  # that action went out without a key
    assert executors[0].uses("n-1") == 1
