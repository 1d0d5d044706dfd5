"""The state layer itself: schema versions, URLs, leases and a database that cannot be reached."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text

from opsagent.errors import StateError, StateUnavailable
from opsagent.policy.state import LATEST, State, open_state, redact, version
from opsagent.policy.state import _lease
from opsagent.policy.state._engine import PG_CONNECT, PG_SESSION
from opsagent.policy.state._schema import schema_version


def test_a_new_database_gets_every_table_at_the_latest_version(state_url: str) -> None:
    state = State(state_url)
    with state.read() as conn:
        assert version(conn) == LATEST
        names = set(state.engine.dialect.get_table_names(conn))
    assert {"cases", "submission_keys", "approvals", "submitters", "ledger", "mode_changes",
            "permit_uses", "tokens", "leases", "opsagent_schema"} <= names
    State(state_url)  # opened again: nothing applied twice
    with state.read() as conn:
        assert conn.execute(select(schema_version.c.version)).scalars().all() == [1]
    state.close()


def test_a_database_from_a_newer_build_is_refused(state_url: str) -> None:
    state = State(state_url)
    with state.write() as conn:
        conn.execute(schema_version.insert().values(version=LATEST + 1, name="future", applied_at="x"))
    with pytest.raises(StateError, match=f"schema version {LATEST + 1}"):
        State(state_url)
    state.close()


def test_the_password_never_shows() -> None:
    url = "postgresql://ops:s3cret-pw@127.0.0.1:1/opsagent"
    assert "s3cret" not in redact(url) and "***" in redact(url)
    with pytest.raises(StateError) as caught:
        State(url)  # nothing listens on port 1
    message = str(caught.value)
    assert "s3cret" not in message and "ops:***@127.0.0.1:1/opsagent" in message


@pytest.mark.parametrize("url", ["mysql://x@y/z", "not a url at all://", "sqlite:////proc/nope/x.sqlite"])
def test_a_misconfigured_url_is_a_state_error_naming_it(url: str) -> None:
    with pytest.raises(StateError, match="state"):
        State(url)


def test_a_path_means_an_sqlite_file_shared_in_the_process(tmp_path) -> None:
    first = open_state(tmp_path / "s.sqlite")
    assert first is open_state(f"sqlite:///{tmp_path / 's.sqlite'}") and first.dialect == "sqlite"
    assert open_state(":memory:") is not open_state(":memory:")


def test_a_lease_has_one_holder_until_it_lapses(state_url: str) -> None:
    state = State(state_url)
    assert _lease.take(state, "cm", "a", 30, now=100).owner == "a"
    assert _lease.take(state, "cm", "b", 30, now=110).owner == "a"  # held: b waits
    assert _lease.take(state, "cm", "a", 30, now=120).until == 150  # renewed by its holder
    assert _lease.take(state, "cm", "b", 30, now=151).owner == "b"  # lapsed: taken over
    assert not _lease.release(state, "cm", "a") and _lease.release(state, "cm", "b")
    assert _lease.held(state, "cm").owner is None
    state.close()


def _race_for_lease(state_url: str, contenders: int = 6) -> list[str]:
    """Every contender takes the (free) lease at once, each in its own process-like State."""
    states = [State(state_url) for _ in range(contenders)]
    _lease.take(states[0], "cm", "setup", 1, now=0)  # the row exists, its lease long lapsed
    barrier = threading.Barrier(contenders)
    winners: list[str] = []

    def contend(i: int) -> None:
        barrier.wait()
        if _lease.take(states[i], "cm", f"owner-{i}", 60).owner == f"owner-{i}":
            winners.append(f"owner-{i}")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for state in states:
        state.close()
    return winners


def test_contenders_for_one_lease_exactly_one_wins(state_url: str) -> None:
    assert len(_race_for_lease(state_url)) == 1


@pytest.mark.postgres
def test_without_for_update_two_contenders_can_both_win(postgres_server, monkeypatch) -> None:
    """Shows the check above has teeth: with the lease row read without FOR UPDATE (and a pause
    after the read that lets the contenders interleave), more than one takes the lease."""
    original = _lease._row
    barrier = threading.Barrier(2, timeout=5)

    def weakened(conn, name, *, for_update=True):
        row = original(conn, name, for_update=False)
        if row.owner == "setup":
            barrier.wait()
        return row

    monkeypatch.setattr(_lease, "_row", weakened)
    assert len(_race_for_lease(postgres_server.new_database(), contenders=2)) == 2


def test_the_state_database_answers_sql(state_url: str) -> None:
    with State(state_url).read() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1


@pytest.mark.postgres
def test_a_lock_its_holder_never_releases_is_not_waited_for(postgres_server) -> None:
    """A session holding a lock and never ending its transaction (a client cut off, or stuck):
    another's wait for that lock ends at the lock timeout as StateUnavailable (its caller waits
    the outage out or answers 503), not a thread blocked for as long as the holder lives."""
    url = postgres_server.new_database() + "?options=-c%20lock_timeout%3D300ms"  # the URL's own wins
    holder, waiter = State(url), State(url, check=False)
    try:
        with holder.write() as conn:
            holder.lock(conn, "ledger")
            with pytest.raises(StateUnavailable) as waited:
                waiter.run(lambda c: waiter.lock(c, "ledger"))
            assert "lock timeout" in str(waited.value)
        waiter.run(lambda c: waiter.lock(c, "ledger"))  # released: taken at once
    finally:
        holder.close()
        waiter.close()


@pytest.mark.postgres
def test_every_connection_carries_the_session_bounds(postgres_server) -> None:
    """Keepalives both ways, and the lock, statement and idle-in-transaction timeouts, are set
    on every pooled connection; a key in the URL's query overrides its default."""
    state = State(postgres_server.new_database() + "?keepalives_idle=42&options=-c%20statement_timeout%3D7s")
    try:
        with state.read() as conn:
            shown = {name: conn.execute(text(f"SHOW {name}")).scalar_one() for name in PG_SESSION}
            params = conn.connection.dbapi_connection.info.get_parameters()
        assert shown == {**PG_SESSION, "statement_timeout": "7s", "lock_timeout": "30s"}
        assert params["keepalives_idle"] == "42" and params["keepalives"] == "1"
        assert params["tcp_user_timeout"] == str(PG_CONNECT["tcp_user_timeout"])
    finally:
        state.close()
