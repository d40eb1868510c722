"""Email authentication: SPF, DKIM, ARC and DMARC verdicts, the policy table,
and the Authentication-Results header (DESIGN 1.4).

Everything here is blocking and pure apart from DNS: the daemon runs
:func:`evaluate` in a thread pool, with the one shared :class:`Resolver`.
Checks evaluate and never reject; :func:`decide` maps verdicts to an action.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from sesmail_gateway.checks.dkim import ArcResult, DkimResult, check_arc, check_dkim
from sesmail_gateway.checks.dmarc import DmarcResult, check_dmarc
from sesmail_gateway.checks.dns import DnsResult, DnsStatus, Resolver
from sesmail_gateway.checks.policy import (
    Decision,
    authentication_results,
    decide,
    strip_forged_authentication_results,
)
from sesmail_gateway.checks.spf import SpfResult, check_spf
from sesmail_gateway.checks.verdicts import Verdicts

T = TypeVar("T")

__all__ = [
    "ArcResult", "Decision", "DkimResult", "DmarcResult", "DnsResult", "DnsStatus", "Resolver",
    "SpfResult", "Verdicts", "authentication_results", "check_arc", "check_dkim", "check_dmarc",
    "check_spf", "decide", "evaluate", "strip_forged_authentication_results",
]


def evaluate(message: bytes, *, ip: str, helo: str, mail_from: str | None, resolver: Resolver,
             now: float | None = None, rng: Callable[[], float] = random.random,
             spf: SpfResult | None = None) -> Verdicts:
    """Run every check on the complete ``message`` (raw bytes as received).

    ``mail_from`` is the envelope sender without angle brackets (``""`` or
    None for the null sender). ``spf`` may pass in the verdict already made
    at MAIL FROM (with the same ip/helo/mail_from) so SPF is not evaluated
    twice. ``now`` is recorded as ``checked_at`` (default ``time.time()``);
    ``rng`` drives DMARC ``pct`` sampling. Never raises: each check turns its
    own failures into ``temperror`` (or ``fail`` for ARC).
    """
    if spf is None:
        spf = _guard(lambda: check_spf(resolver, ip, helo, mail_from),
                     lambda exc: SpfResult("temperror", "", f"internal error: {exc}",
                                           "mailfrom" if mail_from else "helo"))
    dkim = _guard(lambda: tuple(check_dkim(message, resolver)),
                  lambda exc: (DkimResult("temperror", reason=f"internal error: {exc}"),))
    arc = _guard(lambda: check_arc(message, resolver),
                 lambda exc: ArcResult("fail", f"internal error: {exc}"))
    spf_verdict = spf
    dmarc = _guard(lambda: check_dmarc(resolver, message, spf_verdict, dkim, rng=rng),
                   lambda exc: DmarcResult("temperror", reason=f"internal error: {exc}"))
    return Verdicts(spf, dkim, arc, dmarc, time.time() if now is None else now)


def _guard(run: Callable[[], T], fallback: Callable[[Exception], T]) -> T:
    try:
        return run()
    except Exception as exc:  # a bug in a check must not cost the message
        return fallback(exc)
