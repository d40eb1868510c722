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
        # Parsing the message's bytes happens off the event loop, like every check; the
        # stripping is linear and always completes, even when the checks time out.
        cleaned = await loop.run_in_executor(self._pool, strip_forged_authentication_results, content,
                                             self.hostname)

        def run() -> Verdicts:
            return evaluate(cleaned, ip=ip, helo=helo, mail_from=mail_from or None, resolver=self.resolver,
                            spf=spf)

        try:
            async with asyncio.timeout(self.timeout):
                verdicts = await loop.run_in_executor(self._pool, run)
        except TimeoutError:
            log.warning("checks: timed out after %.0fs for sender %r from %s", self.timeout, mail_from, ip)
            verdicts = timed_out(mail_from, spf)
        # Apart from the verdicts: the client's own slow PTR zone must not run the checks out of time.
        try:
            async with asyncio.timeout(self.timeout):
                reverse = await loop.run_in_executor(self._pool, confirmed_reverse_name, self.resolver, ip)
        except TimeoutError:
            reverse = ""
        decision = decide(verdicts, dmarc_mode=self.config.dmarc, spf_fail=self.config.spf_fail)
        header = (authentication_results(self.hostname, verdicts) + "\r\n").encode("ascii")
        return Inspection(verdicts, decision, header, cleaned, reverse)

    def invalidate(self) -> None:
        """SIGHUP: forget cached DNS answers."""
        self.resolver.clear_cache()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
