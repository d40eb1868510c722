"""RFC 3464 delivery status notifications, and who may receive one. Pure functions, no I/O.

A DSN is ``multipart/report; report-type=delivery-status`` with three parts:
a short human-readable text, the ``message/delivery-status`` fields (one
block per failed recipient), and the original message's header section
as ``text/rfc822-headers`` — never its body, so a DSN cannot carry the
original content anywhere.

Who gets one is the backscatter question: only a sender the checks
authenticated (SPF pass for the MAIL FROM domain, or a passing DKIM
signature aligned with it), never the null sender, never in reply to a
message that is itself a DSN or an automatic reply.
"""

from __future__ import annotations

import base64
import email.utils
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sesmail_gateway.checks.dmarc import is_aligned

_FOLD = re.compile(r"\r\n[ \t]")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_AUTOMATIC_LOCAL_PARTS = {"mailer-daemon"}


@dataclass(frozen=True)
class FailedRecipient:
    """One recipient the DSN reports: its address, RFC 3463 status and a short diagnostic."""

    address: str
    status: str  # e.g. "5.1.1"
    diagnostic: str


def header_section(message: bytes) -> bytes:
    """The header section of a message (up to and including the blank line's first CRLF)."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
        return message if end < 0 else message[: end + 1]
    return message[: end + 2]


def header_values(headers: bytes, name: str) -> list[str]:
    """The unfolded values of every field called ``name`` (case-insensitive)."""
    text = _FOLD.sub(" ", headers.decode("latin-1").replace("\r\n", "\n").replace("\n", "\r\n"))
    wanted = name.lower() + ":"
    return [line[len(wanted):].strip() for line in text.split("\r\n") if line.lower().startswith(wanted)]


def why_not_automatic(sender: str, headers: bytes) -> str | None:
    """Why a message must not be answered automatically, or None when it may be."""
    if not sender or sender == "<>":
        return "null sender"
    if sender.rpartition("@")[0].lower() in _AUTOMATIC_LOCAL_PARTS:
        return "sender is a mailer-daemon"
    if any(value.split(";")[0].strip().lower() != "no" for value in header_values(headers, "auto-submitted")):
        return "message is auto-submitted"
    for value in header_values(headers, "content-type"):
        if value.split(";")[0].strip().lower() == "multipart/report":
            return "message is a delivery or disposition report"
    return None


def why_not_authenticated(sender: str, verdicts: Mapping[str, Any]) -> str | None:
    """None when SPF passed for the MAIL FROM domain or a passing DKIM signature aligns with it."""
    domain = sender.rpartition("@")[2].lower()
    spf = verdicts.get("spf") or {}
    if (spf.get("result") == "pass" and spf.get("scope", "mailfrom") == "mailfrom"
            and str(spf.get("domain", "")).lower() == domain):
        return None
    for signature in verdicts.get("dkim") or []:
        if signature.get("result") == "pass" and is_aligned(str(signature.get("domain", "")), domain, "r"):
            return None
    return f"sender not authenticated (spf={spf.get('result', 'none')}, no aligned dkim pass)"


def build_dsn(
    *,
    reporting_mta: str,
    from_address: str,
    to_address: str,
    queue_id: str,
    arrival: float,
    failed: Sequence[FailedRecipient],
    original_headers: bytes,
    now: float | None = None,
) -> tuple[str, bytes]:
    """A complete RFC 3464 message; returns (Message-ID, bytes with CRLF line ends)."""
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    message_id = email.utils.make_msgid("dsn", domain=_clean(from_address.rpartition("@")[2]) or None)
    addresses = ", ".join(_clean(r.address) for r in failed)
    head = [
        f"From: Mail Delivery System <{_clean(from_address)}>",
        f"To: <{_clean(to_address)}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {email.utils.formatdate(now, usegmt=True)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
    ]
    text = [
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"Your message (queue id {_clean(queue_id)}) could not be delivered to: {addresses}.",
        "",
        *(f"<{_clean(r.address)}>: {_clean(r.diagnostic)}" for r in failed),
    ]
    status = [
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {_clean(reporting_mta)}",
        f"X-Queue-ID: {_clean(queue_id)}",
        f"Arrival-Date: {email.utils.formatdate(arrival, usegmt=True)}",
    ]
    for recipient in failed:
        status += [
            "",
            f"Final-Recipient: rfc822; {_clean(recipient.address)}",
            "Action: failed",
            f"Status: {_clean(recipient.status)}",
            f"Diagnostic-Code: smtp; {_clean(recipient.diagnostic)}",
        ]
    parts = [_lines(head), _lines(text), _lines(status) + b"\r\n", _headers_part(original_headers)]
    body = b"".join([parts[0], *(f"\r\n--{boundary}\r\n".encode() + part for part in parts[1:])])
    return message_id, body + f"\r\n--{boundary}--\r\n".encode()


def _headers_part(headers: bytes) -> bytes:
    section = header_section(headers).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if section.isascii():
        return b"Content-Type: text/rfc822-headers\r\n\r\n" + section
    encoded = base64.encodebytes(section).replace(b"\n", b"\r\n")
    return b"Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded


def _lines(lines: Sequence[str]) -> bytes:
    return "\r\n".join(lines).encode("ascii", "replace")


def _clean(text: str) -> str:
    """One header-safe ASCII line: control characters (CR, LF) can never start a new field."""
    return _UNSAFE.sub(" ", text).encode("ascii", "replace").decode("ascii").strip()
