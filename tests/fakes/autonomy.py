"""Autonomy for tests that need writes: the shipped policy starts every class in shadow mode, so a
test promotes the classes it runs, as a recorded admin action (never by editing the policy)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from opsagent.policy.autonomy import AutonomyStore, promoted_store
from opsagent.policy.config import PolicyConfig
from opsagent.policy.credentials import Credential
from opsagent.policy.identity import Identity, Role, TokenStore
from opsagent.policy.modes import Mode

TEST_ADMIN = Identity(name="test-admin", roles=frozenset({Role.admin}))


def promoted(config: PolicyConfig | Iterable[str], mode: Mode | str = Mode.autonomous) -> AutonomyStore:
    """An in-memory autonomy store with every class of `config` (or the named classes) in `mode`."""
    classes = list(config.classes) if isinstance(config, PolicyConfig) else list(config)
    return promoted_store(classes, identity=TEST_ADMIN, reason=f"test: runs {mode}", mode=Mode(mode))


def credential(tokens_path: Path | str, name: str = "test-admin", roles: Iterable[str] = ("admin",)) -> Credential:
    """A new token for `name` in a system's token store, as the `Credential` the policy actor
    checks itself (its methods refuse a bare `Identity`)."""
    return Credential.of(TokenStore(tokens_path).add(name, list(roles)))
