"""Who is acting: API tokens with roles, stored hashed, with an expiry, a revocation and a last-used
time; identities come from authentication only."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field
from sqlalchemy import Connection, select, update
from sqlalchemy.exc import SQLAlchemyError

from opsagent.errors import AuthError, ConfigError, InputError, StateError
from opsagent.policy.state import State, open_state
from opsagent.policy.state._schema import tokens as _tokens


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


log = logging.getLogger(__name__)

LAST_USED_EVERY_S = 60.0
"""A token's last-used time is written at most this often (every request reads the file)."""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_id(digest: str) -> str:
    """The public name of a token (a prefix of its digest): listed, and used to revoke it."""
    return "tok-" + digest[:10]


class TokenInfo(BaseModel):
    """A token as listed: whose, which roles, its lifecycle. Never the token itself."""

    token_id: str
    name: str
    roles: list[Role]
    kind: str = "human"
    created_at: datetime | None = Field(None, description="None for tokens made before this was kept.")
    expires_at: datetime | None = Field(None, description="None: never expires.")
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    last_used_at: datetime | None = Field(None, description="Within LAST_USED_EVERY_S.")

    def state(self, now: datetime | None = None) -> str:
        """active, revoked or expired."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or datetime.now(UTC)):
            return "expired"
        return "active"


class IssuedToken(BaseModel):
    """A new token (shown once) and its listing."""

    token: str
    info: TokenInfo


class TokenStore:
    """API tokens in the state database, by sha256 digest only: it never holds a usable token.
    Each has a creation time, an optional expiry, a revocation and a last-used time; a revoked or
    expired token is refused (401) saying which one it was. `target`: a `State`, a state URL, or
    an SQLite file path."""

    def __init__(self, target: State | Path | str) -> None:
        self.db = open_state(target)
        self.path = target if not isinstance(target, State) else target.redacted

    def _load(self, conn: Connection, *, for_update: bool = False) -> dict[str, dict]:
        query = select(_tokens.c.digest, _tokens.c.record)
        rows = conn.execute(query.with_for_update() if for_update else query).all()
        try:
            return {row.digest: json.loads(row.record) for row in rows}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"token store {self.path}: {exc}") from exc

    def create(self, name: str, roles: list[Role | str], *, kind: str = "human",
               expires_s: float | None = None) -> IssuedToken:
        """Create a token for `name`, valid for `expires_s` seconds (None: until revoked)."""
        identity = Identity(name=name, roles=frozenset(Role(r) for r in roles), kind=kind)
        if expires_s is not None and expires_s <= 0:
            raise InputError(f"a token's lifetime must be positive, got {expires_s:g} s")
        token = "oat_" + secrets.token_urlsafe(24)
        now = datetime.now(UTC)
        record = {**identity.model_dump(mode="json"), "created_at": now.isoformat(),
                  "expires_at": (now + timedelta(seconds=expires_s)).isoformat() if expires_s else None}
        self.db.run(lambda conn: conn.execute(_tokens.insert().values(
            digest=_digest(token), record=json.dumps(record, sort_keys=True))))
        return IssuedToken(token=token, info=_info(_digest(token), record))

    def add(self, name: str, roles: list[Role | str], *, kind: str = "human",
            expires_s: float | None = None) -> str:
        """Create a token for `name`; returns it (shown once, never stored)."""
        return self.create(name, roles, kind=kind, expires_s=expires_s).token

    def authenticate(self, token: str | None) -> Identity:
        """The identity behind a bearer token; AuthError(401) if missing, unknown, revoked or
        expired (the error's `subject` names the token then). Notes the last-used time."""
        if not token:
            raise AuthError("missing bearer token", status=401)
        digest = _digest(token)
        raw = self.db.run(lambda conn: conn.execute(
            select(_tokens.c.record).where(_tokens.c.digest == digest)).scalar_one_or_none(), write=False)
        if raw is None:
            raise AuthError("unknown or revoked token", status=401)
        record = json.loads(raw)
        info = _info(digest, record)
        state = info.state()
        if state != "active":
            when = info.revoked_at if state == "revoked" else info.expires_at
            raise AuthError(f"token {info.token_id} of {info.name} is {state} (since "
                            f"{when.isoformat(timespec='seconds') if when else '?'})", status=401,
                            subject=f"{info.name} ({info.token_id}, {state})")
        now = datetime.now(UTC)
        if info.last_used_at is None or (now - info.last_used_at).total_seconds() >= LAST_USED_EVERY_S:
            self._touch(digest, now)
        return Identity.model_validate({k: record[k] for k in ("name", "roles", "kind") if k in record})

    def _touch(self, digest: str, now: datetime) -> None:
        """Note the last use; best effort (a read-only database still authenticates). The row is
        read FOR UPDATE, so a last-used update can never undo a revocation."""

        def attempt(conn: Connection) -> None:
            raw = conn.execute(select(_tokens.c.record).where(_tokens.c.digest == digest)
                               .with_for_update()).scalar_one_or_none()
            if raw is not None:
                record = json.loads(raw) | {"last_used_at": now.isoformat()}
                conn.execute(update(_tokens).where(_tokens.c.digest == digest).values(
                    record=json.dumps(record, sort_keys=True)))

        try:
            self.db.run(attempt)
        except (StateError, SQLAlchemyError) as exc:
            log.warning("cannot note the last use of a token in %s: %s", self.path, exc)

    def listing(self) -> list[TokenInfo]:
        """Every token, oldest first."""
        tokens = self.db.run(self._load, write=False)
        infos = [_info(d, r) for d, r in tokens.items()]
        return sorted(infos, key=lambda i: (i.created_at or datetime.min.replace(tzinfo=UTC), i.token_id))

    def revoke(self, ref: str, *, by: str | None = None) -> list[TokenInfo]:
        """Revoke the token with this id, or every active token of this name; returns them.
        InputError if nothing active matches."""
        now = datetime.now(UTC)

        def attempt(conn: Connection) -> list[TokenInfo]:
            tokens = self._load(conn, for_update=True)
            hits = [d for d, r in tokens.items()
                    if (token_id(d) == ref or r.get("name") == ref) and _info(d, r).state(now) == "active"]
            if not hits:
                raise InputError(f"no active token has the id or name {ref!r} (see `opsagent tokens list`)")
            for d in hits:
                tokens[d] |= {"revoked_at": now.isoformat(), "revoked_by": by}
                conn.execute(update(_tokens).where(_tokens.c.digest == d).values(
                    record=json.dumps(tokens[d], sort_keys=True)))
            return [_info(d, tokens[d]) for d in hits]

        return self.db.run(attempt)


def _info(digest: str, record: dict) -> TokenInfo:
    return TokenInfo.model_validate({**record, "token_id": token_id(digest)})


def parse_duration(text: str) -> float | None:
    """Seconds in `30d`, `12h`, `90m`, `45s`, `2w` (or `never`: None); InputError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    if text in ("never", "none", "0"):
        return None
    number, unit = text[:-1], text[-1:]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise InputError(f"a duration is a number and a unit (s, m, h, d, w), e.g. 30d; got {text!r}")
    return value * units[unit]


def require(identity: Identity, *roles: Role) -> None:
    """AuthError(403) unless `identity` holds one of `roles` (admin holds all)."""
    if not identity.has(*roles):
        wanted = " or ".join(r.value for r in roles)
        raise AuthError(f"{identity.name} lacks the {wanted} role", status=403)
