"""A PostgreSQL server that goes away mid-run and comes back: each store call in between is a
clear StateUnavailable naming the database (password redacted), raised at once, writing nothing;
the autonomy store does not guess a mode meanwhile; afterwards the same store objects work again,
with everything committed before the outage still there. A misconfigured database is a StateError
that is not StateUnavailable (waiting would not help)."""

from __future__ import annotations


import pytest

from opsagent.errors import StateError, StateUnavailable
from opsagent.policy import ActionKey, LedgerEntry, SpendLedger
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.autonomy import AutonomyStore
from opsagent.policy.limits import Limit
from opsagent.policy.state import State
from tests.postgres import private_server

pytestmark = pytest.mark.postgres
NOW = 1_779_969_600.0
DAY = Limit("daily spend (EUR)", "spend", "day", 1000, "deny")


@pytest.fixture
def own_server():
    """A PostgreSQL server of this test's own (the session's must not go away under others)."""
    yield from private_server()


def _entry(case: str) -> LedgerEntry:
    return LedgerEntry(ActionKey(case, 1, "d"), "billing_dispute", "credit", 100, "EUR")


def test_a_database_that_drops_mid_run_is_a_clear_error_and_loses_nothing(own_server) -> None:
    url = own_server.new_database().replace("opsagent@", "opsagent:s3cret-pw@")
    state = State(url)
    ledger, approvals, autonomy = SpendLedger(state), ApprovalStore(state), AutonomyStore(state)
    ledger.reserve(_entry("C1"), [DAY], now=NOW, hold_until=NOW + 3600)
    own_server.halt()
    with pytest.raises(StateUnavailable) as lost:
        ledger.reserve(_entry("C2"), [DAY], now=NOW, hold_until=NOW + 3600)
    assert "opsagent:***@127.0.0.1" in str(lost.value) and "s3cret" not in str(lost.value)
    with pytest.raises(StateUnavailable):
        approvals.list()
    with pytest.raises(StateUnavailable):  # not "supervised": no decision is made on a guess
        autonomy.mode("weight_mismatch", "autonomous")
    own_server.start()  # back: the pool replaces its dead connections (pre-ping)
    assert ledger.spent(now=NOW) == 100  # C1 committed before the outage; C2 never recorded
    assert ledger.state(_entry("C2").key) is None
    ledger.reserve(_entry("C2"), [DAY], now=NOW, hold_until=NOW + 3600)  # retried: counts once
    assert ledger.spent(now=NOW) == 200 and approvals.list() == []
    state.close()


def test_a_misconfigured_database_is_not_waited_for(own_server) -> None:
    state = State(own_server.url("no_such_database"), check=False)
    with pytest.raises(StateError) as wrong:
        state.run(lambda conn: None)
    assert not isinstance(wrong.value, StateUnavailable) and "no_such_database" in str(wrong.value)
    state.close()
