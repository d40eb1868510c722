"""Sender allow and block lists: entries, and who a message is from.

An entry is one of:

- ``user@example.org``: that address, as the envelope sender or the From header address;
- ``@example.org``: any address at that domain (not its subdomains), likewise;
- ``dmarc:example.org``: the From header domain, only when DMARC passed for it.

Addresses and envelope senders can be forged by anyone; ``dmarc:`` entries
cannot, which is why an allow list should prefer them. Pure: no I/O, no
imports from the rest of the package (config.py validates with it).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Sender", "check_sender_entries", "first_match", "normalise_entry"]

# Labels of letters (any script), digits, "-" and "_", dot-separated.
_DOMAIN = re.compile(r"^[\w-]+(?:\.[\w-]+)*$")


def normalise_entry(entry: str) -> str:
    """Lower-case and validate one list entry; ValueError names the accepted forms."""
    text = entry.strip().lower()
    if text.startswith("dmarc:"):
        domain = text[len("dmarc:"):].rstrip(".")
    elif text.startswith("@"):
        domain = text[1:].rstrip(".")
    else:
        local, at, domain = text.rpartition("@")
        if not at or not local or any(c.isspace() for c in local):
            domain = ""
    if not domain or not _DOMAIN.match(domain):
        raise ValueError(f"bad sender entry {entry!r}: expected user@domain, @domain or dmarc:domain")
    return text.rstrip(".")


def check_sender_entries(entries: Iterable[str]) -> tuple[str, ...]:
    """Every entry normalised; ValueError for the first bad one."""
    return tuple(normalise_entry(entry) for entry in entries)


@dataclass(frozen=True)
class Sender:
    """Who a message is from, as far as the lists care.

    ``dmarc_domain`` is the From header domain when, and only when, DMARC passed.
    """

    envelope: str = ""
    header_from: str = ""
    dmarc_domain: str = ""

    @classmethod
    def of(cls, *, envelope: str, from_header: str, dmarc_result: str, from_domain: str) -> Sender:
        """Build from the raw From header value and the DMARC verdict."""
        addresses = [addr for _, addr in email.utils.getaddresses([from_header]) if "@" in addr]
        header_from = addresses[0].lower() if len(addresses) == 1 else ""
        dmarc = from_domain.lower().rstrip(".") if dmarc_result == "pass" else ""
        return cls(envelope.lower(), header_from, dmarc)

    def matches(self, entry: str) -> bool:
        """Whether ``entry`` (already normalised) names this sender."""
        if entry.startswith("dmarc:"):
            return bool(self.dmarc_domain) and self.dmarc_domain == entry[len("dmarc:"):]
        addresses = [a for a in (self.envelope, self.header_from) if a]
        if entry.startswith("@"):
            return any(a.rpartition("@")[2].rstrip(".") == entry[1:] for a in addresses)
        return entry in addresses


def first_match(sender: Sender, entries: Sequence[str]) -> str | None:
    """The first entry that names ``sender``, or None."""
    return next((entry for entry in entries if sender.matches(entry)), None)
