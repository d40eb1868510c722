"""The bridge between the SMTP handler and the checks: run them off the loop, decide, label.

The checks are blocking (DNS, RSA/ed25519 verification), so they run in a
bounded thread pool; CPU-heavy work spreads over cores through the SMTP
worker processes. A check run that overruns ``timeout`` counts as a
temporary error on every method: the message is accepted and tagged, never
refused for our own slowness.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sesmail_gateway.checks import evaluate
from sesmail_gateway.checks.dkim import ArcResult, DkimResult
from sesmail_gateway.checks.dmarc import DmarcResult
from sesmail_gateway.checks.dns import Resolver, confirmed_reverse_name
from sesmail_gateway.checks.policy import (
    Decision,
    authentication_results,
    decide,
    strip_forged_authentication_results,
)
from sesmail_gateway.checks.spf import SpfResult, check_spf
from sesmail_gateway.checks.verdicts import Verdicts
from sesmail_gateway.config import ChecksConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inspection:
    verdicts: Verdicts
    decision: Decision
    header: bytes  # the Authentication-Results field, CRLF-terminated
    content: bytes  # the message with forged Authentication-Results (ours) removed
    reverse_name: str = ""  # the client's forward-confirmed reverse DNS name, "" if none


def timed_out(mail_from: str | None, spf: SpfResult | None) -> Verdicts:
    why = "checks timed out"
    scope = "mailfrom" if mail_from else "helo"
    return Verdicts(
        spf or SpfResult("temperror", "", why, scope),
        (DkimResult("temperror", reason=why),),
        ArcResult("none"),
        DmarcResult("temperror", reason=why),
    )


class Inspector:
    def __init__(self, *, config: ChecksConfig, hostname: str, concurrency: int = 8, timeout: float = 30.0) -> None:
        self.config = config
        self.hostname = hostname
        self.timeout = timeout
        self.resolver = Resolver(config.dns_servers, timeout=config.dns_timeout)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="checks")

    async def check_sender(self, *, ip: str, helo: str, mail_from: str) -> SpfResult:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                return await loop.run_in_executor(self._pool, check_spf, self.resolver, ip, helo, mail_from)
        except TimeoutError:
            return SpfResult("temperror", "", "SPF check timed out", "mailfrom" if mail_from else "helo")

    async def inspect(self, content: bytes, *, ip: str, helo: str, mail_from: str,
                      spf: SpfResult | None = None) -> Inspection:
        loop = asyncio.get_running_loop()

        def run() -> tuple[bytes, Verdicts, str]:
            # One thread hand-off for the whole inspection: parsing the bytes, the checks, and the
            # client's reverse name (each DNS lookup is bounded by dns_timeout, far inside ``timeout``).
            cleaned = strip_forged_authentication_results(content, self.hostname)
            verdicts = evaluate(cleaned, ip=ip, helo=helo, mail_from=mail_from or None, resolver=self.resolver,
                                spf=spf)
            return cleaned, verdicts, confirmed_reverse_name(self.resolver, ip)

        try:
            async with asyncio.timeout(self.timeout):
                cleaned, verdicts, reverse = await loop.run_in_executor(self._pool, run)
        except TimeoutError:
            log.warning("checks: timed out after %.0fs for sender %r from %s", self.timeout, mail_from, ip)
            # The stripping is linear and always completes: forged results never pass, checks or not.
            cleaned = strip_forged_authentication_results(content, self.hostname)
            verdicts, reverse = timed_out(mail_from, spf), ""
        decision = decide(verdicts, dmarc_mode=self.config.dmarc, spf_fail=self.config.spf_fail)
        header = (authentication_results(self.hostname, verdicts) + "\r\n").encode("ascii")
        return Inspection(verdicts, decision, header, cleaned, reverse)

    def invalidate(self) -> None:
        """SIGHUP: forget cached DNS answers."""
        self.resolver.clear_cache()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
