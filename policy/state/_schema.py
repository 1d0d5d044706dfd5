"""Every durable table of opsagent, in one SQLAlchemy `MetaData` (one schema on both backends).

Times the stores compare as numbers are unix seconds (`Float`); times they only show are ISO
8601 text in UTC (which sorts as it compares). Money is integer millionths (`BigInteger`).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

schema_version = Table(
    "opsagent_schema", metadata,
    Column("version", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("applied_at", Text, nullable=False),
)

# cluster/case_store.py: every case (its JSON) and every submission key
cases = Table(
    "cases", metadata,
    Column("case_id", Text, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("final", Integer, nullable=False),
    Column("entry", Text, nullable=False),
    Column("exception_type", Text, nullable=False, server_default=""),
    Column("submitted_by", Text),
    Column("has_approval", Integer, nullable=False, server_default="0"),
    UniqueConstraint("seq", name="cases_seq_unique"),
)
Index("cases_open", cases.c.final, cases.c.seq)
Index("cases_status", cases.c.status, cases.c.seq)
Index("cases_class", cases.c.exception_type, cases.c.seq)
Index("cases_submitter", cases.c.submitted_by, cases.c.seq)
Index("cases_approval", cases.c.has_approval, cases.c.seq)

submission_keys = Table(
    "submission_keys", metadata,
    Column("submitter", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("case_id", Text, nullable=False),
    Column("digest", Text, nullable=False),
    PrimaryKeyConstraint("submitter", "key"),  # one case per (submitter, key), whoever inserts it
)

# policy/state/_lease.py: who may run the cases now (one live case manager per database)
leases = Table(
    "leases", metadata,
    Column("name", Text, primary_key=True),
    Column("owner", Text),
    Column("until", Float, nullable=False, server_default="0"),
    Column("taken_at", Float),
)

# policy/approvals.py
approvals = Table(
    "approvals", metadata,
    Column("approval_id", Text, primary_key=True),
    Column("case_id", Text, nullable=False),
    Column("exception_type", Text, nullable=False),
    Column("step", Integer, nullable=False),
    Column("tool", Text, nullable=False),
    Column("args", Text, nullable=False),
    Column("args_digest", Text, nullable=False),
    Column("risk", Text),
    Column("reasons", Text, nullable=False),
    Column("policy_version", Text, nullable=False),
    Column("preview", Text),
    Column("status", Text, nullable=False),
    Column("requested_at", Text, nullable=False),
    Column("expires_at", Text, nullable=False),
    Column("decided_at", Text),
    Column("approver", Text),
    Column("reason", Text),
    Column("supersedes", Text, nullable=False, server_default="[]"),
    UniqueConstraint("case_id", "step", "args_digest", name="approvals_action"),
)
Index("approvals_status", approvals.c.status, approvals.c.requested_at)

submitters = Table(
    "submitters", metadata,
    Column("case_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    PrimaryKeyConstraint("case_id", "name"),
)

# policy/ledger.py
ledger = Table(
    "ledger", metadata,
    Column("case_id", Text, nullable=False),
    Column("step", Integer, nullable=False),
    Column("args_digest", Text, nullable=False),
    Column("exception_type", Text, nullable=False),
    Column("tool", Text, nullable=False),
    Column("amount_micro", BigInteger, nullable=False),
    Column("currency", Text),
    Column("day", Text, nullable=False),  # UTC date of the reservation
    Column("at", Float, nullable=False),  # unix time of the reservation
    Column("hold_until", Float, nullable=False),  # an uncommitted reservation lapses then
    Column("state", Text, nullable=False),
    Column("entity", Text),  # the business entity spent on, e.g. invoice_id=INV-1
    PrimaryKeyConstraint("case_id", "step", "args_digest"),
    CheckConstraint("state IN ('reserved', 'committed', 'released')", name="ledger_state"),
)
Index("ledger_day", ledger.c.day, ledger.c.tool, ledger.c.exception_type)
Index("ledger_at", ledger.c.at)
Index("ledger_entity", ledger.c.entity, ledger.c.tool)

# policy/autonomy.py: append-only (triggers in _migrations.py refuse UPDATE and DELETE)
mode_changes = Table(
    "mode_changes", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("exception_type", Text, nullable=False),
    Column("from_mode", Text),
    Column("to_mode", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", Text, nullable=False),
    Column("automatic", Integer, nullable=False),
)
Index("mode_changes_class", mode_changes.c.exception_type, mode_changes.c.seq)

# policy/permit_uses.py
permit_uses = Table(
    "permit_uses", metadata,
    Column("nonce", Text, primary_key=True),
    Column("case_id", Text, nullable=False),
    Column("step", Integer, nullable=False),
    Column("args_digest", Text, nullable=False),
    Column("tool", Text, nullable=False),
    Column("idempotency_key", Text),
    Column("used_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)
Index("permit_uses_action", permit_uses.c.case_id, permit_uses.c.step, permit_uses.c.args_digest)

# policy/identity.py: API tokens by sha256 digest (the record is the token's JSON, never the token)
tokens = Table(
    "tokens", metadata,
    Column("digest", Text, primary_key=True),
    Column("record", Text, nullable=False),
)

STORES: dict[str, tuple[Table, ...]] = {
    "cases": (cases, submission_keys),
    "approvals": (approvals, submitters),
    "ledger": (ledger,),
    "autonomy": (mode_changes,),
    "permit_uses": (permit_uses,),
    "tokens": (tokens,),
}
"""The stores and their tables: what `opsagent state migrate` copies and verifies."""
