"""Deliverers carry one delivery group (action, target, recipients) to its destination."""

from __future__ import annotations

from typing import Protocol

from sesmail_gateway.message import Delivery, QueueItem, StoredMessage


class Deliverer(Protocol):
    def deliver(self, item: QueueItem, delivery: Delivery, message: StoredMessage) -> None:
        """Deliver once, or raise TemporaryFailure / PermanentFailure / TokenExpired.

        Blocks; the runner calls it from a worker thread. Must be idempotent
        for a retry after a crash where possible.
        """
        ...
