"""`opsagent state migrate`: every store copied from a single-machine SQLite file to another
database (PostgreSQL, or another SQLite file), counts and digests verified; refused against a
live system, a non-empty target or a missing source, losing nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from opsagent.agents.case import Case, CaseStatus
from opsagent.cli import main
from opsagent.cluster.case_store import CaseStore, StoredCase
from opsagent.errors import StateBusy, StateError
from opsagent.policy import ActionKey, LedgerEntry, SpendLedger
from opsagent.policy.approvals import ApprovalStore
from opsagent.policy.autonomy import AutonomyStore
from opsagent.policy.identity import Identity, Role, TokenStore
from opsagent.policy.limits import Limit
from opsagent.policy.permit_uses import PermitUses
from opsagent.policy.records import Permit
from opsagent.policy.state import State, state_db
from opsagent.policy.state._copy import copy_state
from tests.fakes.book_ports import report

ADMIN = Identity(name="ada", roles=frozenset({Role.admin}))
NOW = 1_779_969_600.0


def _populate(url: str) -> dict:
    """One of everything a running system writes."""
    cases = CaseStore(url)
    stored = StoredCase(case=Case(report=report("resolve", 1), status=CaseStatus.resolved), submitted_by="alice",
                        idempotency_key="k1")
    cases.save_new(stored, "alice", "k1", "digest-1")
    approvals = ApprovalStore(url)
    held = approvals.request(case_id=stored.case.case_id, exception_type="weight_mismatch", step=2, tool="adjust",
                             args={"kg": 3.5}, args_digest="d" * 64, risk="high", reasons=["r"],
                             policy_version="v1", preview={"diff": 1}, submitted_by="alice")
    SpendLedger(url).reserve(LedgerEntry(ActionKey(stored.case.case_id, 2, "d"), "billing_dispute", "credit",
                                         12.34, "EUR", "invoice_id=INV-1"),
                             [Limit("daily", "spend", "day", 100, "deny")], now=NOW, hold_until=NOW + 60)
    modes = AutonomyStore(url)
    modes.set_mode("weight_mismatch", "supervised", identity=ADMIN, reason="go",
                   now=datetime(2026, 5, 1, tzinfo=UTC))
    PermitUses(url).claim(Permit(nonce="n1", case_id=stored.case.case_id, step=2, tool="adjust", args_digest="d" * 64,
                                 issued_at=NOW, expires_at=NOW + 60, policy_version="v1", key_id="k" * 16,
                                 signature="s"), "idem", now=NOW)
    token = TokenStore(url).add("bob", ["approver"])
    return {"case": stored.case.case_id, "approval": held.approval_id, "token": token}


def test_every_store_arrives_verified_and_works_on_the_target(tmp_path, state_url, capsys) -> None:
    source = state_db(tmp_path / "single-machine")
    made = _populate(source)
    assert main(["state", "migrate", "--from", str(tmp_path / "single-machine"), "--to", state_url]) == 0
    out = capsys.readouterr()
    assert "every count and digest equal" in out.err
    for table in ("cases", "submission_keys", "approvals", "submitters", "ledger", "mode_changes",
                  "permit_uses", "tokens"):
        assert f" {table} " in out.out and "DIFFERENT" not in out.out
    # the target serves as the system's state from now on
    assert CaseStore(state_url).key("alice", "k1") == (made["case"], "digest-1")
    assert ApprovalStore(state_url).get(made["approval"]).args == {"kg": 3.5}
    assert ApprovalStore(state_url).submitters(made["case"]) == {"alice"}
    assert SpendLedger(state_url).spent(now=NOW) == 12.34
    modes = AutonomyStore(state_url)
    assert modes.mode("weight_mismatch") == "supervised"
    modes.set_mode("weight_mismatch", "autonomous", identity=ADMIN, reason="more")  # the history goes on
    assert [h.to_mode for h in modes.history("weight_mismatch")] == ["supervised", "autonomous"]
    assert TokenStore(state_url).authenticate(made["token"]).name == "bob"
    assert PermitUses(state_url).uses("n1") == 1
    # a second run refuses: the target is no longer empty
    assert main(["state", "migrate", "--from", str(tmp_path / "single-machine"), "--to", state_url]) == 1
    assert "already holds opsagent state" in capsys.readouterr().err


def test_a_live_system_is_refused_and_nothing_is_copied(tmp_path, state_url) -> None:
    source = state_db(tmp_path / "single-machine")
    _populate(source)
    running = CaseStore(source)
    assert running.take_lease("system-1", 60).owner == "system-1"  # a case manager is running
    with pytest.raises(StateBusy, match="a system is running on .*system-1"):
        copy_state(State(source), State(state_url))
    with State(state_url).read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM cases").scalar_one() == 0
    running.release_lease("system-1")  # stopped: now it may move
    assert sum(c.target_rows for c in copy_state(State(source), State(state_url))) > 0


def test_a_missing_source_is_a_clear_error(tmp_path, capsys) -> None:
    assert main(["state", "migrate", "--from", str(tmp_path / "nope"), "--to", state_db(tmp_path / "t")]) == 1
    assert "no state database at sqlite:///" in capsys.readouterr().err
