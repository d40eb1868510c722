"""Bounces for accepted mail: an RFC 3464 DSN through SES, or a reason why none was sent.

With ``bounce.mode = "dsn"`` the runner hands every message that ends as a
dead letter to :class:`Bouncer`. A DSN goes out at most once per message,
only to an authenticated, non-null sender, and never in reply to a report
or an automatic message; every decision is one ``dsn`` mail-event line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from sesmail_gateway import maillog
from sesmail_gateway.bounce.dsn import (
    FailedRecipient,
    build_dsn,
    header_section,
    why_not_authenticated,
    why_not_automatic,
)
from sesmail_gateway.errors import classify
from sesmail_gateway.message import Delivery, QueueItem

log = logging.getLogger(__name__)

# How much of the spool file is read to find the header section.
HEADER_LIMIT = 256 * 1024
# Client-facing diagnostics stay generic: the failure's detail (targets, API errors) stays in our log.
_BOUNCED = ("5.1.1", "550 5.1.1 Recipient address rejected")
_EXPIRED = ("4.4.7", "Delivery time expired")
_FAILED = ("5.0.0", "550 5.0.0 Delivery failed permanently")


class RawSender(Protocol):
    def send(self, raw: bytes, *, source: str, destination: str) -> str: ...


def failed_recipients(deliveries: Sequence[Delivery]) -> list[FailedRecipient]:
    """One line per recipient of the failed deliveries, each address once."""
    seen: dict[str, FailedRecipient] = {}
    for delivery in deliveries:
        if delivery.action == "bounce":
            status, text = _BOUNCED
        elif delivery.last_error.startswith("gave up after"):
            status, text = _EXPIRED
        else:
            status, text = _FAILED
        for address in delivery.recipients:
            seen.setdefault(address, FailedRecipient(address, status, text))
    return list(seen.values())


class Bouncer:
    """Decides whether a dead letter earns a DSN, builds it and sends it. Never raises."""

    def __init__(
        self,
        *,
        sender: RawSender,
        from_address: str,
        reporting_mta: str,
        message_path: Callable[[QueueItem], Path],
    ) -> None:
        self.sender = sender
        self.from_address = from_address
        self.reporting_mta = reporting_mta
        self.message_path = message_path

    def bounce(self, item: QueueItem, failed_deliveries: Sequence[Delivery], reason: str) -> None:
        """Send the DSN for ``item`` if it may have one; record it on ``item.dsn`` (the caller saves)."""
        if item.dsn:
            return self._log(item, sent=False, why="a DSN was already sent", dsn=item.dsn)
        failed = failed_recipients(failed_deliveries)
        if not failed:
            return self._log(item, sent=False, why="no failed recipient")
        try:
            headers = self._headers(item)
        except OSError as exc:
            return self._log(item, sent=False, why=f"message unreadable: {exc.strerror or exc}")
        why = why_not_automatic(item.sender, headers) or why_not_authenticated(item.sender, item.verdicts)
        if why:
            return self._log(item, sent=False, why=why)
        message_id, raw = build_dsn(
            reporting_mta=self.reporting_mta, from_address=self.from_address, to_address=item.sender,
            queue_id=item.id, arrival=item.created, failed=failed, original_headers=headers,
        )
        try:
            ses_id = self.sender.send(raw, source=self.from_address, destination=item.sender)
        except Exception as exc:
            return self._log(item, sent=False, why=f"SES refused or unreachable: {classify(exc)}")
        item.dsn = message_id
        self._log(item, sent=True, why=reason, dsn=message_id, ses_message_id=ses_id,
                  recipients=[r.address for r in failed])

    def _headers(self, item: QueueItem) -> bytes:
        with self.message_path(item).open("rb") as handle:
            return header_section(handle.read(HEADER_LIMIT))

    def _log(self, item: QueueItem, *, sent: bool, why: str, **fields: object) -> None:
        maillog.event("dsn", item.id, sent=sent, to=item.sender or "<>", reason=why, **fields)
