"""Approval notifications: written to the delivery log at once, POSTed by a background thread,
signed, retried with a doubling pause. `notify` never waits for the receiver, so a slow or dead
receiver cannot hold up a case."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from opsagent.cluster.webhooks._config import WebhookConfig
from opsagent.cluster.webhooks._log import Delivery, DeliveryLog
from opsagent.cluster.webhooks._signing import signed_headers

log = logging.getLogger(__name__)

# approval fields a notification carries (not the preview: a dry-run diff can be large)
_FIELDS = ("approval_id", "case_id", "exception_type", "step", "tool", "args", "args_digest", "risk",
           "reasons", "policy_version", "status", "requested_at", "expires_at", "decided_at",
           "approver", "reason")


def body(delivery_id: str, event: str, approval: Any, console_url: str, now: float) -> str:
    """The JSON body of one notification, with links to the console."""
    data = approval.model_dump(mode="json", include=set(_FIELDS))
    return json.dumps({
        "id": delivery_id, "event": event,
        "created_at": datetime.fromtimestamp(now, UTC).isoformat(),
        "approval": data,
        "links": {"case": f"{console_url}/console/cases/{approval.case_id}",
                  "approvals": f"{console_url}/console/approvals"},
    }, sort_keys=True, separators=(",", ":"))


class WebhookNotifier:
    """Sends approval events to one webhook. `start()` runs the delivery thread; `close()` stops it
    (what is pending stays in the log and is sent after the next start)."""

    def __init__(self, config: WebhookConfig, secret: str, delivery_log: DeliveryLog, *,
                 on_attempt: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config, self.log = config, delivery_log
        self._secret = secret
        self._on_attempt = on_attempt or (lambda event, outcome: None)
        self._clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self, event: str, approval: Any) -> Delivery | None:
        """Log `event` for `approval` to be sent (once per approval and event); never raises."""
        if event not in self.config.events:
            return None
        try:
            now = self._clock()
            added = self.log.add(event, approval.approval_id, approval.case_id, self.config.url,
                                 lambda did: body(did, event, approval, self.config.console_url, now), now)
        except Exception as exc:  # noqa: BLE001 - a notification is never worth a failed decision
            log.error("approval webhook: cannot log %s for %s: %s", event, approval.approval_id, exc)
            return None
        if added is not None:
            self._wake.set()
        return added

    def start(self) -> "WebhookNotifier":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="approval-webhook", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def deliver_due(self, client: httpx.Client) -> int:
        """Attempt every delivery that is due; returns how many were attempted."""
        due = self.log.due(self._clock())
        for delivery in due:
            if self._stop.is_set():
                break
            self._attempt(client, delivery)
        return len(due)

    def _run(self) -> None:
        with httpx.Client(timeout=self.config.timeout_s, follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    self.deliver_due(client)
                    nxt = self.log.next_due()
                except Exception as exc:  # noqa: BLE001 - the thread must outlive one bad tick
                    log.exception("approval webhook: delivery loop failed: %s", exc)
                    nxt = None
                wait = 5.0 if nxt is None else min(5.0, max(0.0, nxt - self._clock()))
                self._wake.wait(wait)
                self._wake.clear()

    def _attempt(self, client: httpx.Client, d: Delivery) -> None:
        raw = d.body.encode()
        started = time.monotonic()
        code: int | None = None
        error: str | None = None
        try:
            answer = client.post(self.config.url, content=raw,  # the URL configured now
                                 headers=signed_headers(self._secret, d.delivery_id, d.event, raw, self._clock()))
            code = answer.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}: {answer.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        now, took = self._clock(), (time.monotonic() - started) * 1000
        attempts = d.attempts + 1
        if error is None:
            status, outcome, nxt = "delivered", "delivered", None
        elif attempts >= self.config.max_attempts:
            status, outcome, nxt = "failed", "failed", None
            log.error("approval webhook: %s for %s failed after %d attempts: %s", d.event,
                      d.approval_id, attempts, error)
        else:
            status, outcome, nxt = "pending", "retry", now + self.config.retry_delay(attempts)
        self.log.record(d.delivery_id, now=now, status_code=code, error=error, duration_ms=took,
                        status=status, next_attempt_at=nxt)
        self._on_attempt(d.event, outcome)
