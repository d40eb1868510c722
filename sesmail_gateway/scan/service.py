"""Scan a message at the end of DATA and decide, per recipient, with the policy table.

The configured scanners run in parallel in a bounded thread pool, off the
event loop, all within ``scan.timeout``; a scanner that fails or overruns
gives an ``error`` result, never an exception. The sender lists and the
route's ``spam`` setting are applied per recipient; the recipients' actions
are then folded into one for the message (``checks.policy.for_message``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sesmail_gateway.checks.headers import header_fields, unfold
from sesmail_gateway.checks.policy import Decision, decide_scan, for_message
from sesmail_gateway.config import ScanConfig
from sesmail_gateway.message import QueueItem
from sesmail_gateway.routes import Rule
from sesmail_gateway.scan import CLEAN, ERROR, SPAM, VIRUS, Envelope, ScanError, Scanner, ScanResult
from sesmail_gateway.scan.headers import scan_headers
from sesmail_gateway.scan.lists import Sender, check_sender_entries, first_match

log = logging.getLogger(__name__)

# Observer of each scanner's result: (scanner, result, seconds) → metrics.
Observe = Callable[[str, str, float], None]


@dataclass(frozen=True)
class RouteScan:
    """A route's scan settings: ``spam`` is "" (the default: reject and label by score), "label" or "off"."""

    spam: str = ""
    allow_from: tuple[str, ...] = ()
    block_from: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> RouteScan:
        """From ``RecipientRoute.scan``, which holds the rule's values as read (and validated) by routes.records."""
        data = data or {}
        return cls(str(data.get("spam") or ""), tuple(data.get("allow_from") or ()),
                   tuple(data.get("block_from") or ()))


@dataclass(frozen=True)
class ScanReport:
    decision: Decision  # for the whole message, authentication included
    header: bytes  # X-Spam-Status, X-Spam-Score, X-Virus-Status; CRLF-terminated
    verdict: dict[str, Any]  # for the spool metadata and the log line
    results: tuple[ScanResult, ...]


@dataclass(frozen=True)
class _Listing:
    status: str  # "blocked" | "allowed" | ""
    entry: str = ""


class Scanning:
    def __init__(self, config: ScanConfig, scanners: Sequence[Scanner], *, concurrency: int = 16,
                 observe: Observe | None = None) -> None:
        self.config = config
        self.scanners = tuple(scanners)
        self.allow_from = check_sender_entries(config.allow_from)
        self.block_from = check_sender_entries(config.block_from)
        self.observe = observe
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="scan")

    async def scan(self, content: bytes, *, envelope: Envelope, routes: Sequence[dict[str, Any] | None],
                   auth_decision: Decision) -> ScanReport:
        """Scan ``content`` and decide for the message; ``routes`` holds each recipient's route scan settings."""
        sender = _sender(content, envelope)
        settings = [RouteScan.from_dict(route) for route in routes] or [RouteScan()]
        listings = [self._listing(sender, route) for route in settings]
        wanted = self._wanted(settings, listings)
        results = await self._run(content[: self.config.max_size], envelope, wanted)
        decisions = [decide_scan(auth_decision, self._outcomes(results, route, listing))
                     for route, listing in zip(settings, listings, strict=True)]
        decision = for_message(decisions)
        verdict = self._verdict(results, listings)
        return ScanReport(decision, scan_headers(results, self.config, wanted), verdict, results)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- steps ---------------------------------------------------------------

    def _listing(self, sender: Sender, route: RouteScan) -> _Listing:
        """The route's lists first (block wins over allow), then the global ones."""
        for blocks, allows in ((route.block_from, route.allow_from), (self.block_from, self.allow_from)):
            if entry := first_match(sender, blocks):
                return _Listing("blocked", entry)
            if entry := first_match(sender, allows):
                return _Listing("allowed", entry)
        return _Listing("")

    def _wanted(self, settings: list[RouteScan], listings: list[_Listing]) -> tuple[Scanner, ...]:
        """The scanners worth running: none when every recipient blocks the sender; spam
        scanners only when some recipient's spam setting still applies."""
        if all(listing.status == "blocked" for listing in listings):
            return ()
        spam = any(route.spam != "off" and listing.status == "" for route, listing in zip(settings, listings, strict=True))
        return tuple(s for s in self.scanners if s.kind == "virus" or spam)

    async def _run(self, message: bytes, envelope: Envelope, scanners: tuple[Scanner, ...]) -> tuple[ScanResult, ...]:
        return tuple(await asyncio.gather(*(self._one(scanner, message, envelope) for scanner in scanners)))

    async def _one(self, scanner: Scanner, message: bytes, envelope: Envelope) -> ScanResult:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.timeout):
                result = await loop.run_in_executor(self._pool, scanner.scan, message, envelope)
        except TimeoutError:
            result = ScanResult(scanner.name, ERROR, error=f"no verdict within {self.config.timeout:g}s")
        except ScanError as exc:
            result = ScanResult(scanner.name, ERROR, error=str(exc))
        except Exception as exc:  # a bug in a client must not cost the message
            log.error("scan: %s failed: %s", scanner.name, exc, exc_info=exc)
            result = ScanResult(scanner.name, ERROR, error=f"internal error: {type(exc).__name__}")
        seconds = time.monotonic() - started
        if result.result == CLEAN and result.score is not None and result.score >= self.config.label_score:
            result = ScanResult(result.scanner, SPAM, result.score, result.symbols, seconds=result.seconds)
        if result.result == ERROR:
            log.warning("scan: %s for %s: %s", scanner.name, envelope.queue_id, result.error)
        if self.observe is not None:
            self.observe(scanner.name, result.result, seconds)
        return ScanResult(result.scanner, result.result, result.score, result.symbols, result.virus, result.error,
                          seconds)

    def _outcomes(self, results: tuple[ScanResult, ...], route: RouteScan,
                  listing: _Listing) -> Iterator[tuple[str, str, str, str]]:
        """(check, outcome, setting, reason) for one recipient, for ``decide_scan``."""
        for result in results:
            if result.result == VIRUS:
                yield "virus", "found", "*", f"virus {result.virus} ({result.scanner})"
        if listing.status == "blocked":
            yield "sender", "blocked", "*", f"sender matches block_from {listing.entry}"
            return
        spam_applies = route.spam != "off" and listing.status != "allowed"
        for kind in ("virus", "spam"):
            ran = [r for r in results if _kind(r, self.scanners) == kind]
            if ran and all(r.result == ERROR for r in ran) and (kind == "virus" or spam_applies):
                failed = ", ".join(f"{r.scanner}: {r.error}" for r in ran)
                yield "scan", "error", self.config.on_failure, f"{kind} scan failed ({failed})"
        top = _top_spam(results)
        if route.spam == "off" or top is None or top.score is None:
            return
        cfg = self.config
        outcome = "reject" if top.score >= cfg.reject_score else "label" if top.score >= cfg.label_score else ""
        if outcome:
            setting = "allowed" if listing.status == "allowed" else route.spam or "reject"
            threshold = cfg.reject_score if outcome == "reject" else cfg.label_score
            why = f" sender matches allow_from {listing.entry}" if listing.status == "allowed" else ""
            yield "spam", outcome, setting, f"spam score {top.score:g} >= {threshold:g} ({top.scanner}){why}"

    def _verdict(self, results: tuple[ScanResult, ...], listings: list[_Listing]) -> dict[str, Any]:
        top = _top_spam(results)
        listed = sorted({f"{item.status}:{item.entry}" for item in listings if item.status})
        verdict: dict[str, Any] = {"results": [r.to_dict() for r in results]}
        if top is not None:
            verdict["spam_score"] = top.score
        viruses = [r.virus for r in results if r.result == VIRUS]
        if viruses:
            verdict["virus"] = viruses[0]
        if listed:
            verdict["sender"] = listed
        return verdict


def route_scan_settings(rule: Rule) -> dict[str, Any] | None:
    """What a recipient's rule says about scanning, for ``RecipientRoute.scan``; None when nothing."""
    settings = {"spam": rule.spam, "allow_from": list(rule.allow_from), "block_from": list(rule.block_from)}
    return {key: value for key, value in settings.items() if value} or None


def scan_envelope(item: QueueItem) -> Envelope:
    """What the scanners are told about a message being received (auth verdicts already in ``item``)."""
    return Envelope(queue_id=item.id, sender=item.sender, recipients=tuple(item.recipient_addresses),
                    client_ip=item.client.ip, helo=item.client.helo, client_name=item.client.reverse_name,
                    auth=item.verdicts)


def _kind(result: ScanResult, scanners: tuple[Scanner, ...]) -> str:
    return next((s.kind for s in scanners if s.name == result.scanner), "")


def _top_spam(results: tuple[ScanResult, ...]) -> ScanResult | None:
    scored = [r for r in results if r.score is not None and r.result != ERROR]
    return max(scored, key=lambda r: r.score or 0.0, default=None)


def _sender(content: bytes, envelope: Envelope) -> Sender:
    froms = [unfold(f.value) for f in header_fields(content) if f.is_named("from")]
    dmarc = envelope.auth.get("dmarc") or {}
    return Sender.of(envelope=envelope.sender, from_header=froms[0] if len(froms) == 1 else "",
                     dmarc_result=str(dmarc.get("result", "")), from_domain=str(dmarc.get("from_domain", "")))
