"""Permits: the policy's signed leave to run exactly one action, checked by whoever executes it.

A permit names the tool, the digest of the exact arguments, the case and step, an expiry, the
policy version, a nonce and the id of the key that signed it. The policy signs it with an Ed25519
private key that only the policy's process holds (`PermitSigner`); executors hold only the
public keys (`PermitVerifier`) and run a write only after the verifier accepts the permit for the
call they are about to make. A public key verifies but cannot sign, so nothing an executor, the
case manager, a planner or an executor factory holds can make a permit: a component that skips
the policy (a bug, a compromised runner, an injected instruction) cannot execute.

Keys: the policy loads its private key (PKCS#8 PEM) from the file `OPSAGENT_PERMIT_SIGNING_KEY`
names (on Kubernetes a secret mounted only on the policy's pod), or, on one machine, from a file
it creates on first start (`load_or_create_signer`). Executors get the policy's public key from
the policy actor at start, plus any in the file `OPSAGENT_PERMIT_PUBLIC_KEYS` names (PEM, one or
more keys): to rotate, add the new public key there, then give the policy the new private key;
permits signed with either verify, each finds its key by the `key_id` it carries. The verifier
re-reads that file when it meets a key id it does not know.

A permit is used once: executors record its nonce before the call (`policy.permit_uses`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from opsagent.errors import ConfigError, PermitError
from opsagent.policy.records import Permit, args_digest, canonical_json

KEY_ENV = "OPSAGENT_PERMIT_SIGNING_KEY"
"""Path of the policy's private key (PEM). Set only where the policy actor runs."""
PUBLIC_KEYS_ENV = "OPSAGENT_PERMIT_PUBLIC_KEYS"
"""Path of extra public keys executors accept (PEM, several allowed): rotation."""
LEGACY_KEY_ENV = "OPSAGENT_PERMIT_KEY"  # the shared HMAC key of old builds: refused, see below
_DOMAIN = b"opsagent-permit-v2\n"
_process_signer: PermitSigner | None = None


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name of a public key: sha256 of its raw bytes, 16 hex digits."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class PermitSigner:
    """The policy's private key. Never pickled: it cannot travel to another actor by accident."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.key_id = key_id(private.public_key())

    @classmethod
    def generate(cls) -> PermitSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes, where: str = "the permit signing key") -> PermitSigner:
        """ConfigError, naming `where`, unless `data` is an unencrypted PEM Ed25519 private key."""
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{where} is not a PEM private key: {err}") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise ConfigError(f"{where} is a {type(private).__name__}, not an Ed25519 private key")
        return cls(private)

    @classmethod
    def from_file(cls, path: str | Path) -> PermitSigner:
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"permit signing key file {path} does not exist") from None
        except OSError as err:
            raise ConfigError(f"cannot read permit signing key file {path}: {err}") from None
        return cls.from_pem(data, f"permit signing key file {path}")

    def private_pem(self) -> bytes:
        return self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())

    def public_pem(self) -> bytes:
        return self._private.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)

    def verifier(self) -> PermitVerifier:
        """A verifier of this key's permits (public key only)."""
        return PermitVerifier.from_pem(self.public_pem())

    def sign(self, fields: Mapping[str, Any]) -> str:
        return self._private.sign(_message(fields)).hex()

    def __reduce__(self) -> Any:
        raise TypeError("a permit signing key never leaves the policy's process")

    def __repr__(self) -> str:
        return f"PermitSigner(key_id={self.key_id!r})"


class PermitVerifier:
    """Public keys by key id; verifies permits, cannot make one. Picklable (public keys only)."""

    def __init__(self, keys: Mapping[str, bytes], *, source: str | None = None) -> None:
        """`keys`: key id -> raw 32-byte public key; `source`: a PEM file re-read on an unknown id."""
        self._raw = dict(keys)
        self._source = source
        self._seen: float | None = None

    @classmethod
    def from_pem(cls, data: bytes | str, where: str = "permit public keys", *,
                 source: str | None = None) -> PermitVerifier:
        """Every public key in `data` (PEM blocks); ConfigError for a private key or a malformed one."""
        return cls(_public_keys(data if isinstance(data, bytes) else data.encode(), where), source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> PermitVerifier:
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ConfigError(f"cannot read permit public keys file {path}: {err}") from None
        verifier = cls.from_pem(data, f"permit public keys file {path}", source=str(path))
        verifier._seen = path.stat().st_mtime
        return verifier

    def merged(self, other: PermitVerifier) -> PermitVerifier:
        merged = PermitVerifier({**self._raw, **other._raw}, source=self._source or other._source)
        merged._seen = self._seen if self._source else other._seen
        return merged

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._raw)

    def public_pem(self) -> bytes:
        return b"".join(Ed25519PublicKey.from_public_bytes(raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            for raw in self._raw.values())

    def verify_signature(self, permit: Permit) -> None:
        """PermitError unless a key of this verifier signed `permit` and it was not altered since."""
        raw = self._raw.get(permit.key_id) or self._reread(permit.key_id)
        if raw is None:
            raise PermitError(f"permit signature is not valid: unknown key id {permit.key_id!r}")
        try:
            signature = bytes.fromhex(permit.signature)
            Ed25519PublicKey.from_public_bytes(raw).verify(signature, _message(_fields(permit)))
        except (ValueError, InvalidSignature):
            raise PermitError("permit signature is not valid") from None

    def verify(self, permit: Permit | Mapping[str, Any] | None, tool: str, args: dict[str, Any],
               case_id: str, step: int, now: float | None = None) -> Permit:
        """The permit, if it is genuine and for exactly this call now; PermitError saying why not."""
        if permit is None:
            raise PermitError(f"no permit for {tool} (case {case_id}, step {step})")
        if not isinstance(permit, Permit):
            try:
                permit = Permit.model_validate(permit)
            except ValidationError as err:
                raise PermitError(f"malformed permit: {err.error_count()} invalid field(s)") from None
        self.verify_signature(permit)
        if permit.tool != tool:
            raise PermitError(f"permit is for tool {permit.tool!r}, not {tool!r}")
        if permit.args_digest != args_digest(tool, args):
            raise PermitError(f"permit is for other arguments to {tool}")
        if (permit.case_id, permit.step) != (case_id, step):
            raise PermitError(
                f"permit is for case {permit.case_id} step {permit.step}, not case {case_id} step {step}")
        now = time.time() if now is None else now
        if now >= permit.expires_at:
            raise PermitError(f"permit expired {now - permit.expires_at:.1f}s ago")
        return permit

    def _reread(self, wanted: str) -> bytes | None:
        """Rotation: the source file may hold a key added since it was read."""
        if self._source is None:
            return None
        try:
            mtime = Path(self._source).stat().st_mtime
            if mtime == self._seen:
                return None
            self._raw.update(_public_keys(Path(self._source).read_bytes(), self._source))
            self._seen = mtime
        except (OSError, ConfigError):
            return None
        return self._raw.get(wanted)

    def __repr__(self) -> str:
        return f"PermitVerifier(key_ids={self.key_ids!r})"


def issue_permit(
    *, tool: str, args_digest: str, case_id: str, step: int, policy_version: str, key: PermitSigner,
    ttl_s: float, now: float | None = None,
) -> Permit:
    """A permit for one action, valid for `ttl_s` seconds from `now`, signed with `key`."""
    if not isinstance(key, PermitSigner):
        raise ConfigError("permits are signed with the policy's PermitSigner (an Ed25519 private key)")
    now = time.time() if now is None else now
    unsigned = Permit(tool=tool, args_digest=args_digest, case_id=case_id, step=step, issued_at=now,
                      expires_at=now + ttl_s, policy_version=policy_version, nonce=secrets.token_hex(16),
                      key_id=key.key_id, signature="")
    return unsigned.model_copy(update={"signature": key.sign(_fields(unsigned))})


def verify_permit(
    permit: Permit | Mapping[str, Any] | None, tool: str, args: dict[str, Any], case_id: str, step: int,
    key: PermitVerifier, now: float | None = None,
) -> Permit:
    """`key.verify(...)`: the permit if it is genuine and for exactly this call now."""
    return as_verifier(key).verify(permit, tool, args, case_id, step, now)


def as_verifier(key: PermitVerifier | PermitSigner) -> PermitVerifier:
    """The verifier to use for `key` (a signer's own public key: for the policy and tests)."""
    if isinstance(key, PermitSigner):
        return key.verifier()
    if not isinstance(key, PermitVerifier):
        raise ConfigError(f"permits are verified with a PermitVerifier, got {type(key).__name__}")
    return key


def new_permit_key() -> PermitSigner:
    """A fresh signing key (a new Ed25519 key pair)."""
    return PermitSigner.generate()


def permit_key_from_env(environ: Mapping[str, str] = os.environ) -> PermitSigner | None:
    """The signing key in the file OPSAGENT_PERMIT_SIGNING_KEY names, None if unset; ConfigError
    if the file is missing or malformed, or if only the old shared HMAC key is set."""
    path = environ.get(KEY_ENV)
    if not path:
        if environ.get(LEGACY_KEY_ENV):
            raise ConfigError(f"{LEGACY_KEY_ENV} (a shared HMAC key) is no longer used: permits are "
                              f"signed with an Ed25519 key only the policy holds; set {KEY_ENV} to the "
                              "path of its PEM file on the policy's node (`opsagent keys permit`)")
        return None
    return PermitSigner.from_file(path.strip())


def public_keys_from_env(environ: Mapping[str, str] = os.environ) -> PermitVerifier | None:
    """Extra public keys (OPSAGENT_PERMIT_PUBLIC_KEYS), None if unset."""
    path = environ.get(PUBLIC_KEYS_ENV)
    return PermitVerifier.from_file(path.strip()) if path else None


def process_permit_key() -> PermitSigner:
    """OPSAGENT_PERMIT_SIGNING_KEY if set, else a key generated once for this process."""
    global _process_signer
    if (key := permit_key_from_env()) is not None:
        return key
    if _process_signer is None:
        _process_signer = PermitSigner.generate()
    return _process_signer


def load_or_create_signer(path: str | Path) -> PermitSigner:
    """The key in `path`, created (mode 0600, never overwritten) if the file does not exist yet:
    one machine's policy keeps its key across restarts without anyone handing it over."""
    path = Path(path)
    if path.exists():
        return PermitSigner.from_file(path)
    signer = PermitSigner.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: use theirs
        return PermitSigner.from_file(path)
    with os.fdopen(fd, "wb") as out:
        out.write(signer.private_pem())
        out.flush()
        os.fsync(out.fileno())
    return signer


def _public_keys(data: bytes, where: str) -> dict[str, bytes]:
    if b"PRIVATE KEY" in data:
        raise ConfigError(f"{where} holds a private key: executors are given public keys only")
    blocks = [b"-----BEGIN" + part for part in data.split(b"-----BEGIN")[1:]]
    if not blocks:
        raise ConfigError(f"{where} holds no PEM public key")
    keys: dict[str, bytes] = {}
    for block in blocks:
        try:
            public = serialization.load_pem_public_key(block)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{where}: not a PEM public key: {err}") from None
        if not isinstance(public, Ed25519PublicKey):
            raise ConfigError(f"{where}: a {type(public).__name__}, not an Ed25519 public key")
        keys[key_id(public)] = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return keys


def _fields(permit: Permit) -> dict[str, Any]:
    return permit.model_dump(exclude={"signature"})


def _message(fields: Mapping[str, Any]) -> bytes:
    return _DOMAIN + canonical_json(dict(fields)).encode()
