"""Approval notifications by webhook: signed JSON POSTs on approval requested, about to expire,
decided and expired, delivered in the background with retries, every attempt in a delivery log."""

from opsagent.cluster.webhooks._config import EVENTS, WebhookConfig
from opsagent.cluster.webhooks._log import Attempt, Delivery, DeliveryLog
from opsagent.cluster.webhooks._notifier import WebhookNotifier, body
from opsagent.cluster.webhooks._signing import (
    DELIVERY, EVENT, SIGNATURE, TIMESTAMP, signature, signed_headers, verify,
)
from opsagent.cluster.webhooks._watch import ApprovalWatch

__all__ = ["DELIVERY", "EVENT", "EVENTS", "SIGNATURE", "TIMESTAMP", "ApprovalWatch", "Attempt",
           "Delivery", "DeliveryLog", "WebhookConfig", "WebhookNotifier", "body", "signature",
           "signed_headers", "verify"]
