"""Archivers keep a copy of every accepted message before any delivery."""

from __future__ import annotations

from typing import Protocol

from sesmail_gateway.message import QueueItem, StoredMessage


class Archiver(Protocol):
    def archive(self, item: QueueItem, message: StoredMessage) -> str:
        """Store the message; return where (a path or URL). Idempotent. Blocks."""
        ...
