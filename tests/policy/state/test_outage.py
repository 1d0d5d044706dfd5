"""A PostgreSQL server that goes away mid-run and comes back: each store call in between is a
clear StateError naming the database (password redacted) and writes nothing; afterwards the same
store objects work again, with everything committed before the outage still there."""

from __future__ import annotations

import os

import pytest

from opsagent.errors import StateError
from opsagent.policy import ActionKey, LedgerEntry, SpendLedger
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.limits import Limit
from opsagent.policy.state import State
from tests.postgres import PostgresServer, find_bin

pytestmark = pytest.mark.postgres
NOW = 1_779_969_600.0
DAY = Limit("daily spend (EUR)", "spend", "day", 1000, "deny")


@pytest.fixture
def own_server():
    """A server of this test's own (the session's must not go away under other tests)."""
    bindir = find_bin()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed (run scripts/setup.sh)")
        pytest.skip("PostgreSQL is not installed")
    server = PostgresServer(bindir)
    yield server
    server.stop()


def _entry(case: str) -> LedgerEntry:
    return LedgerEntry(ActionKey(case, 1, "d"), "billing_dispute", "credit", 100, "EUR")


def test_a_database_that_drops_mid_run_is_a_clear_error_and_loses_nothing(own_server) -> None:
    url = own_server.new_database().replace("opsagent@", "opsagent:s3cret-pw@")
    state = State(url)
    ledger, approvals = SpendLedger(state), ApprovalStore(state)
    ledger.reserve(_entry("C1"), [DAY], now=NOW, hold_until=NOW + 3600)
    own_server.halt()
    with pytest.raises(StateError) as lost:
        ledger.reserve(_entry("C2"), [DAY], now=NOW, hold_until=NOW + 3600)
    assert "opsagent:***@127.0.0.1" in str(lost.value) and "s3cret" not in str(lost.value)
    with pytest.raises(StateError):
        approvals.list()
    own_server.start()  # back: the pool replaces its dead connections (pre-ping)
    assert ledger.spent(now=NOW) == 100  # C1 committed before the outage; C2 never recorded
    assert ledger.state(_entry("C2").key) is None
    ledger.reserve(_entry("C2"), [DAY], now=NOW, hold_until=NOW + 3600)  # retried: counts once
    assert ledger.spent(now=NOW) == 200 and approvals.list() == []
    state.close()
