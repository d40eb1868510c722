"""Email authentication: SPF, DKIM, ARC and DMARC verdicts, the policy table,
and the Authentication-Results header.

Everything here is blocking and pure apart from DNS: the daemon runs
:func:`evaluate` in a thread pool, with the one shared :class:`Resolver`.
Checks evaluate and never reject; :func:`decide` maps verdicts to an action.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from sesmail_gateway.checks.dkim import ArcResult, DkimResult, check_arc, check_dkim
from sesmail_gateway.checks.dmarc import CHECK_FAILED, DmarcResult, check_dmarc
from sesmail_gateway.checks.dns import DkimTxtLookup, DnsResult, DnsStatus, Resolver
from sesmail_gateway.checks.headers import RawField, header_fields
from sesmail_gateway.checks.policy import (
    Decision,
    authentication_results,
    decide,
    strip_forged_authentication_results,
)
from sesmail_gateway.checks.spf import SpfResult, check_spf
from sesmail_gateway.checks.verdicts import Verdicts

T = TypeVar("T")
#: Seconds of DKIM and ARC key lookups per message (one further lookup may start just before).
KEY_LOOKUP_BUDGET = 12.0
log = logging.getLogger(__name__)

__all__ = [
    "ArcResult", "Decision", "DkimResult", "DmarcResult", "DnsResult", "DnsStatus", "Resolver",
    "SpfResult", "Verdicts", "authentication_results", "check_arc", "check_dkim", "check_dmarc",
    "check_spf", "decide", "evaluate", "strip_forged_authentication_results",
]


def evaluate(message: bytes, *, ip: str, helo: str, mail_from: str | None, resolver: Resolver,
             now: float | None = None, rng: Callable[[], float] = random.random,
             spf: SpfResult | None = None, fields: Sequence[RawField] | None = None) -> Verdicts:
    """Run every check on the complete ``message`` (raw bytes as received).

    ``mail_from`` is the envelope sender without angle brackets (``""`` or
    None for the null sender). ``spf`` may pass in the verdict already made
    at RCPT (with the same ip/helo/mail_from) so SPF is not evaluated
    twice. ``now`` is recorded as ``checked_at`` (default ``time.time()``);
    ``rng`` drives DMARC ``pct`` sampling. Never raises.

    ``temperror`` means DNS trouble and nothing else: an exception escaping a
    check is a defect of the message or of our code, so it is ``permerror``
    (``fail`` for ARC), never a result that lets a message skip its policy.
    A DMARC check that breaks gives ``permerror`` with reason
    :data:`CHECK_FAILED`, which the policy table quarantines under enforce.
    ``fields``: the message's header fields, when the caller has parsed them.
    """
    parsed = header_fields(message) if fields is None else fields
    if spf is None:
        spf = _guard("spf", lambda: check_spf(resolver, ip, helo, mail_from),
                     lambda why: SpfResult("permerror", "", why, "mailfrom" if mail_from else "helo"))
    # DKIM and ARC key lookups share one budget, well inside the inspector's timeout: a message
    # signed with keys on deliberately slow name servers must not run the checks out of time
    # (a timeout leaves DMARC temperror, which applies no policy).
    keys = DkimTxtLookup(resolver, KEY_LOOKUP_BUDGET)
    dkim = _guard("dkim", lambda: tuple(check_dkim(message, resolver, lookup=keys, fields=parsed)),
                  lambda why: (DkimResult("permerror", reason=why),))
    arc = _guard("arc", lambda: check_arc(message, resolver, lookup=keys, fields=parsed),
                 lambda why: ArcResult("fail", why))
    spf_verdict = spf
    dmarc = _guard("dmarc", lambda: check_dmarc(resolver, message, spf_verdict, dkim, rng=rng, fields=parsed),
                   lambda why: DmarcResult("permerror", reason=CHECK_FAILED))
    return Verdicts(spf, dkim, arc, dmarc, time.time() if now is None else now)


def _guard(check: str, run: Callable[[], T], fallback: Callable[[str], T]) -> T:
    try:
        return run()
    except Exception as exc:  # a bug in a check must not cost the message, nor let it skip policy
        log.error("checks: %s check failed: %s", check, type(exc).__name__, exc_info=exc)
        return fallback(f"internal error: {type(exc).__name__}")
