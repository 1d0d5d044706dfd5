"""Configuration of the approval webhook (SystemConfig.approval_webhook)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

from opsagent.errors import ConfigError

Event = Literal["approval.requested", "approval.expiring", "approval.decided", "approval.expired"]
EVENTS: tuple[Event, ...] = ("approval.requested", "approval.expiring", "approval.decided", "approval.expired")


class WebhookConfig(BaseModel):
    """Where approval notifications go and how they are signed and retried."""

    model_config = {"extra": "forbid"}
    url: str = Field(description="The receiver's URL (http or https); every event is POSTed here.")
    secret_env: str | None = Field(
        default="OPSAGENT_WEBHOOK_SECRET",
        description="Environment variable holding the signing secret (read where the system starts).")
    secret: SecretStr | None = Field(
        default=None, description="The signing secret itself (over secret_env; keep it out of files "
        "that are committed).")
    console_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Base URL of the operations console; the body links to <console_url>/console/cases/<case>.")
    events: list[Event] = Field(default_factory=lambda: list(EVENTS), description="Events to send.")
    expiry_warning_s: float = Field(
        default=3600.0, gt=0, description="Send approval.expiring once this many seconds before expiry.")
    timeout_s: float = Field(default=5.0, gt=0, description="Seconds one delivery attempt may take.")
    max_attempts: int = Field(default=8, ge=1, le=50, description="Attempts before a delivery is failed.")
    backoff_s: float = Field(default=2.0, gt=0, description="Pause before the first retry; doubles each time.")
    backoff_max_s: float = Field(default=600.0, gt=0, description="Longest pause between two attempts.")

    @field_validator("url", "console_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    def resolve_secret(self) -> str:
        """The signing secret: `secret`, else the `secret_env` variable (ConfigError if neither)."""
        if self.secret is not None and self.secret.get_secret_value():
            return self.secret.get_secret_value()
        value = os.environ.get(self.secret_env or "")
        if not value:
            raise ConfigError(f"approval_webhook: no signing secret (set {self.secret_env or 'secret_env'} "
                              "or approval_webhook.secret)")
        return value

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** (attempts - 1))
