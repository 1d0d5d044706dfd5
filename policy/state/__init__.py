"""The one storage layer of opsagent's durable state: cases and submission keys, approvals, the
spending ledger, autonomy modes, permit nonces and API tokens, in one schema on SQLite (one
machine) or PostgreSQL (a cluster), chosen by the system config's `state:` URL."""

from opsagent.policy.state._engine import (
    STATE_FILE,
    State,
    forget_states,
    open_state,
    redact,
    state_db,
    state_of,
    state_url,
)
from opsagent.policy.state._lease import CASE_MANAGER, Lease
from opsagent.policy.state._migrations import LATEST, upgrade, version
from opsagent.policy.state._schema import STORES, metadata

__all__ = ["CASE_MANAGER", "LATEST", "STATE_FILE", "state_db", "state_of", "STORES", "Lease", "State", "forget_states", "metadata",
           "open_state", "redact", "state_url", "upgrade", "version"]
