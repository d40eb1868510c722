"""The ``bounce`` action when ``bounce.mode = "dsn"``: the message was accepted, so it fails here.

The failure makes the message a dead letter whose record says why; a DSN
goes back through SES only for authenticated senders (the SES adapter).
"""

from __future__ import annotations

from sesmail_gateway.errors import PermanentFailure
from sesmail_gateway.message import Delivery, QueueItem, StoredMessage


class RuleBounce:
    def deliver(self, item: QueueItem, delivery: Delivery, message: StoredMessage) -> None:
        raise PermanentFailure(f"refused by routing rule for {', '.join(delivery.recipients)}")
