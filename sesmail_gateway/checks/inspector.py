"""The bridge between the SMTP handler and the checks: run them, decide, label.

The checks block on DNS, so a run that needs DNS goes to a bounded thread
pool. Most runs need none: a sender's SPF, DKIM key, DMARC and reverse DNS
answers are cached after its first message. Such a run, for a message up to
``INLINE_LIMIT``, is done at once on the event loop, answered from the cache
alone: a thread hand-off costs more than the checks of a small message, and
pool threads only take turns with the loop for the one interpreter lock. A
run that finds an answer missing is thrown away and done again in the pool.
CPU-heavy work spreads over cores through the SMTP worker processes. A pool
run that overruns ``timeout`` counts as a temporary error on every method:
the message is accepted and tagged, never refused for our own slowness.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from sesmail_gateway.checks import evaluate
from sesmail_gateway.checks.dkim import ArcResult, DkimResult
from sesmail_gateway.checks.dmarc import DmarcResult
from sesmail_gateway.checks.dns import Resolver, confirmed_reverse_name
from sesmail_gateway.checks.headers import header_fields
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
T = TypeVar("T")

#: The largest message inspected on the event loop (when its DNS answers are cached). The checks
#: are linear in the size: about 1 ms of CPU at 100 KiB, so no session waits long behind one.
INLINE_LIMIT = 128 * 1024


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
        self.inline_runs = 0  # check runs done on the event loop from cached answers
        self.pooled_runs = 0  # check runs that needed DNS (or a large message): in the pool

    def _from_cache(self, run: Callable[[], T]) -> T | None:
        """``run()`` here and now, every DNS answer from the cache; None when one was missing."""
        with self.resolver.cache_only() as probe:
            result = run()
        if probe.missed:
            return None
        self.inline_runs += 1
        return result

    async def check_sender(self, *, ip: str, helo: str, mail_from: str) -> SpfResult:
        cached = self._from_cache(lambda: check_spf(self.resolver, ip, helo, mail_from))
        if cached is not None:
            return cached
        self.pooled_runs += 1
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
            # One run for the whole inspection: parsing the bytes, the checks, and the client's
            # reverse name (each DNS lookup is bounded by dns_timeout, far inside ``timeout``).
            fields = header_fields(content)  # parsed once for the stripping and every check
            cleaned = strip_forged_authentication_results(content, self.hostname, fields)
            verdicts = evaluate(cleaned, ip=ip, helo=helo, mail_from=mail_from or None, resolver=self.resolver,
                                spf=spf, fields=fields if cleaned is content else None)
            return cleaned, verdicts, confirmed_reverse_name(self.resolver, ip)

        outcome = self._from_cache(run) if len(content) <= INLINE_LIMIT else None
        try:
            if outcome is None:
                self.pooled_runs += 1
                async with asyncio.timeout(self.timeout):
                    outcome = await loop.run_in_executor(self._pool, run)
            cleaned, verdicts, reverse = outcome
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
