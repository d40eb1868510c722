"""Spam and virus scanning by external scanners: rspamd, SpamAssassin's spamd, ClamAV's clamd.

Each backend is a small blocking client behind one protocol,
:class:`Scanner`: bytes in, one :class:`ScanResult` out. A scanner that
cannot be reached, times out or answers nonsense raises :class:`ScanError`;
the caller turns that into an ``error`` result and the policy decides
(accept and tag, or 451). :mod:`sesmail_gateway.scan.service` runs the
configured scanners off the event loop and turns their results into policy
outcomes; :mod:`sesmail_gateway.checks.policy` decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["CLEAN", "ERROR", "SPAM", "VIRUS", "Envelope", "ScanError", "ScanResult", "Scanner"]

# ScanResult.result values, also the `result` label of sesmail_scan_results_total.
CLEAN = "clean"
SPAM = "spam"  # a spam score was returned; the policy compares it with the thresholds
VIRUS = "virus"
ERROR = "error"


class ScanError(Exception):
    """The scanner could not give a verdict (down, timed out, protocol error)."""


@dataclass(frozen=True)
class Envelope:
    """What a scanner may be told about the message besides its bytes."""

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    client_ip: str
    helo: str
    client_name: str = ""  # forward-confirmed reverse DNS name, "" when none
    # Our authentication verdicts, for scanners that take them (rspamd), so they are not checked twice.
    auth: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScanResult:
    """One scanner's verdict. ``score`` is set by spam scanners, ``virus`` by virus scanners."""

    scanner: str
    result: str
    score: float | None = None
    symbols: tuple[str, ...] = ()
    virus: str = ""
    error: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"scanner": self.scanner, "result": self.result, "seconds": round(self.seconds, 4)}
        if self.score is not None:
            data["score"] = self.score
        if self.symbols:
            data["symbols"] = list(self.symbols)
        if self.virus:
            data["virus"] = self.virus
        if self.error:
            data["error"] = self.error
        return data


class Scanner(Protocol):
    """One external scanner. ``scan`` blocks (callers run it in a thread) and
    raises ScanError when no verdict can be had within ``timeout`` seconds."""

    name: str
    kind: str  # "spam" or "virus"

    def scan(self, message: bytes, envelope: Envelope) -> ScanResult: ...
