"""HMAC-SHA256 signatures of webhook bodies, with a timestamp against replays.

Headers of every delivery: `X-Opsagent-Delivery` (its id; the same on each retry),
`X-Opsagent-Event`, `X-Opsagent-Timestamp` (Unix seconds of this attempt) and
`X-Opsagent-Signature: sha256=<hex>`, the HMAC-SHA256 under the shared secret of
`<timestamp>.<delivery id>.<raw body>`. A receiver recomputes it over the raw bytes it got, compares
in constant time, and refuses a timestamp more than a few minutes from its clock.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

SIGNATURE = "X-Opsagent-Signature"
TIMESTAMP = "X-Opsagent-Timestamp"
DELIVERY = "X-Opsagent-Delivery"
EVENT = "X-Opsagent-Event"


def signature(secret: str, timestamp: int, delivery_id: str, body: bytes) -> str:
    """`sha256=<hex>` of `<timestamp>.<delivery id>.<body>` under `secret`."""
    message = f"{timestamp}.{delivery_id}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str, delivery_id: str, event: str, body: bytes,
                   now: float | None = None) -> dict[str, str]:
    timestamp = int(time.time() if now is None else now)
    return {"Content-Type": "application/json", DELIVERY: delivery_id, EVENT: event,
            TIMESTAMP: str(timestamp), SIGNATURE: signature(secret, timestamp, delivery_id, body)}


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """True if `headers` carry a valid signature of `body` made within `tolerance_s` of now."""
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        timestamp = int(lower[TIMESTAMP.lower()])
        delivery_id, given = lower[DELIVERY.lower()], lower[SIGNATURE.lower()]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(given, signature(secret, timestamp, delivery_id, body))
