"""Watches the pending approvals: sends `approval.expiring` once one is within the warning time of
its expiry and `approval.expired` once it has expired, and reports the pending count and the
oldest's age to the metrics. Decisions and withdrawals are notified where they happen; the watch
also catches the ones it finds settled without a notification (e.g. decided before a restart)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

log = logging.getLogger(__name__)


class ApprovalWatch:
    """`tick()` once, or `start()` a thread that ticks every `interval_s`.

    `pending()`: the pending approvals now (expiring those past their time, as `list` does);
    `get(id)`: one approval; `notify(event, approval)`; `report(pending, now)`: metrics."""

    def __init__(self, pending: Callable[[], Sequence[Any]], get: Callable[[str], Any],
                 notify: Callable[[str, Any], Any] | None, report: Callable[[Sequence[Any], datetime], None],
                 *, warning_s: float = 3600.0, interval_s: float = 15.0,
                 watched: Sequence[str] = (), clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._pending, self._get, self._notify, self._report = pending, get, notify, report
        self.warning = timedelta(seconds=warning_s)
        self.interval_s = interval_s
        self._clock = clock
        self._watched: set[str] = set(watched)  # pending at the last look (or notified before a restart)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        now = self._clock()
        seen = set(self._watched)
        pending = list(self._pending())
        self._report(pending, now)
        if self._notify is None:
            return
        ids = {a.approval_id for a in pending}
        keep = set()
        for approval in pending:
            if approval.expires_at - now <= self.warning:
                self._notify("approval.expiring", approval)
        for approval_id in sorted(seen - ids):
            try:
                approval = self._get(approval_id)
            except Exception as exc:  # noqa: BLE001 - gone from the store: nothing to tell
                log.warning("approval watch: cannot read %s: %s", approval_id, exc)
                continue
            if approval.status == "expired":
                self._notify("approval.expired", approval)
            elif approval.status in ("approved", "rejected"):
                self._notify("approval.decided", approval)
            else:  # requested after the list was read
                keep.add(approval_id)
        self._watched = ids | keep | (self._watched - seen)  # and those `watch`ed during this tick

    def watch(self, approval_id: str) -> None:
        """Follow an approval from now on (one just requested), even if it settles before a tick."""
        self._watched.add(approval_id)

    def start(self) -> "ApprovalWatch":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="approval-watch", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and wait for a tick under way to finish (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the next tick tries again
                log.exception("approval watch: tick failed")
