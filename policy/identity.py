"""Who is acting: API tokens with roles, stored hashed; identities come from authentication only."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from opsagent.errors import AuthError, ConfigError


class Role(StrEnum):
    submitter = "submitter"  # submits exceptions, reads its cases
    approver = "approver"  # decides held high-risk actions
    auditor = "auditor"  # reads everything, changes nothing
    admin = "admin"  # everything, plus autonomy modes and tokens


class Identity(BaseModel, frozen=True):
    """An authenticated caller. `kind` agent marks opsagent's own components: never an approver."""

    name: str
    roles: frozenset[Role]
    kind: str = Field(default="human", pattern="^(human|agent)$")

    def has(self, *roles: Role) -> bool:
        return Role.admin in self.roles or any(r in self.roles for r in roles)


AGENT = Identity(name="opsagent", roles=frozenset(), kind="agent")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """API tokens in a JSON file, by sha256 digest only: the file never holds a usable token."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _load(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"token file {self.path}: {exc}") from exc

    def add(self, name: str, roles: list[Role | str], *, kind: str = "human") -> str:
        """Create a token for `name`; returns it (shown once, never stored)."""
        identity = Identity(name=name, roles=frozenset(Role(r) for r in roles), kind=kind)
        token = "oat_" + secrets.token_urlsafe(24)
        with self._lock:
            tokens = self._load()
            tokens[_digest(token)] = identity.model_dump(mode="json")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(tokens, indent=1, sort_keys=True))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        return token

    def authenticate(self, token: str | None) -> Identity:
        """The identity behind a bearer token; AuthError(401) if missing or unknown."""
        if not token:
            raise AuthError("missing bearer token", status=401)
        record = self._load().get(_digest(token))
        if record is None:
            raise AuthError("unknown or revoked token", status=401)
        return Identity.model_validate(record)


def require(identity: Identity, *roles: Role) -> None:
    """AuthError(403) unless `identity` holds one of `roles` (admin holds all)."""
    if not identity.has(*roles):
        wanted = " or ".join(r.value for r in roles)
        raise AuthError(f"{identity.name} lacks the {wanted} role", status=403)
