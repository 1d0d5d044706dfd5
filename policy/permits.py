"""Permits: the policy's signed leave to run exactly one action, checked by whoever executes it.

A permit names the tool, the digest of the exact arguments, the case and step, an expiry, the
policy version and a nonce, and is signed with HMAC-SHA256 under a key only the policy and the
executors hold. An executor runs a write only after `verify_permit` accepts the permit for the
call it is about to make, so a component that skips the policy (a bug, a compromised runner, an
injected instruction) cannot execute: it cannot forge the signature, and a genuine permit does
not fit any other tool, arguments, case or step, nor any time after its expiry.

The key: `OPSAGENT_PERMIT_KEY` (hex, at least 16 bytes) if set, else one generated per process
(`process_permit_key`). In a cluster the policy and the executors run in different processes, so
whoever starts them creates one key (`new_permit_key()`) and hands it to both, or sets the
variable for all of them. The key is never part of the policy file (it would be in its digest).

Using a permit twice for the same action is a retry of that action: executors send the
idempotency key `case:step`, and the spend ledger counts the action once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from opsagent.errors import ConfigError, PermitError
from opsagent.policy.records import Permit, args_digest, canonical_json

KEY_ENV = "OPSAGENT_PERMIT_KEY"
_MIN_KEY_BYTES = 16
_DOMAIN = b"opsagent-permit-v1\n"
_process_key: bytes | None = None


def new_permit_key() -> bytes:
    """A fresh random 32-byte key."""
    return secrets.token_bytes(32)


def permit_key_from_env(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The key in OPSAGENT_PERMIT_KEY (hex), None if unset; ConfigError if malformed or short."""
    text = environ.get(KEY_ENV)
    if not text:
        return None
    try:
        key = bytes.fromhex(text.strip())
    except ValueError as err:
        raise ConfigError(f"{KEY_ENV} must be hex: {err}") from err
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigError(f"{KEY_ENV} must hold at least {_MIN_KEY_BYTES} bytes, got {len(key)}")
    return key


def process_permit_key() -> bytes:
    """OPSAGENT_PERMIT_KEY if set, else a key generated once for this process."""
    global _process_key
    if (key := permit_key_from_env()) is not None:
        return key
    if _process_key is None:
        _process_key = new_permit_key()
    return _process_key


def issue_permit(
    *, tool: str, args_digest: str, case_id: str, step: int, policy_version: str, key: bytes,
    ttl_s: float, now: float | None = None,
) -> Permit:
    """A permit for one action, valid for `ttl_s` seconds from `now`."""
    now = time.time() if now is None else now
    fields = {
        "tool": tool, "args_digest": args_digest, "case_id": case_id, "step": step, "issued_at": now,
        "expires_at": now + ttl_s, "policy_version": policy_version, "nonce": secrets.token_hex(16),
    }
    unsigned = Permit(**fields, signature="")  # sign the fields as the model holds them (floats)
    return unsigned.model_copy(update={"signature": _sign(unsigned.model_dump(exclude={"signature"}), key)})


def verify_permit(
    permit: Permit | Mapping[str, Any] | None, tool: str, args: dict[str, Any], case_id: str, step: int,
    key: bytes, now: float | None = None,
) -> Permit:
    """The permit, if it is genuine and for exactly this call now; PermitError saying why not."""
    if permit is None:
        raise PermitError(f"no permit for {tool} (case {case_id}, step {step})")
    if not isinstance(permit, Permit):
        try:
            permit = Permit.model_validate(permit)
        except ValidationError as err:
            raise PermitError(f"malformed permit: {err.error_count()} invalid field(s)") from err
    verify_signature(permit, key)
    if permit.tool != tool:
        raise PermitError(f"permit is for tool {permit.tool!r}, not {tool!r}")
    if permit.args_digest != args_digest(tool, args):
        raise PermitError(f"permit is for other arguments to {tool}")
    if (permit.case_id, permit.step) != (case_id, step):
        raise PermitError(
            f"permit is for case {permit.case_id} step {permit.step}, not case {case_id} step {step}"
        )
    now = time.time() if now is None else now
    if now >= permit.expires_at:
        raise PermitError(f"permit expired {now - permit.expires_at:.1f}s ago")
    return permit


def verify_signature(permit: Permit, key: bytes) -> None:
    """PermitError unless `permit` was signed with `key` and not altered since."""
    if len(key) < _MIN_KEY_BYTES:
        raise PermitError("no usable permit key")
    expected = _sign(permit.model_dump(exclude={"signature"}), key)
    if not hmac.compare_digest(expected, permit.signature):
        raise PermitError("permit signature is not valid")


def _sign(fields: Mapping[str, Any], key: bytes) -> str:
    return hmac.new(key, _DOMAIN + canonical_json(dict(fields)).encode(), hashlib.sha256).hexdigest()
