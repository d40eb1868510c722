"""SPF (RFC 7208) with pyspf, resolving through the daemon's :class:`Resolver`.

pyspf looks names up through a module-level ``spf.DNSLookup``; replacing that
global would route every thread's queries through one resolver. Instead
:class:`_GatewayQuery` subclasses ``spf.query`` and overrides its ``dns()``
method, the one place pyspf asks DNS, keeping pyspf's semantics: per-query
memo, invalid names answer nothing, the void-lookup limit (RFC 7208 4.6.4),
and an overall time budget. CNAME chains are followed by the resolver.
pyspf itself enforces the 10-lookup limit and everything else in the RFC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import spf

from sesmail_gateway.checks.dns import DnsResult, DnsStatus, Resolver, ascii_domain

__all__ = ["SPF_RESULTS", "SpfResult", "check_spf"]

SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


@dataclass(frozen=True)
class SpfResult:
    """``domain`` is the identity checked: the MAIL FROM domain, or the HELO
    name when MAIL FROM is null (``scope == "helo"``, RFC 7208 2.4)."""

    result: str
    domain: str
    explanation: str = ""
    scope: str = "mailfrom"


class _GatewayQuery(spf.query):  # type: ignore[misc]
    """``spf.query`` whose DNS goes through our resolver (and its cache)."""

    def __init__(self, resolver: Resolver, lifetime: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._resolver = resolver
        self._deadline = time.monotonic() + lifetime

    def dns(self, name: Any, qtype: str, cnames: Any = None, ignore_void: bool = False) -> list[Any]:
        if not name:
            raise spf.PermError("empty domain name in DNS query")
        name = str(name)
        if name.endswith("."):
            name = name[:-1]
        if not all(0 < len(label) < 64 for label in name.split(".")):
            return []  # an invalid DNS name has no records (RFC 7208 4.3)
        key = (name.lower(), qtype)
        if key not in self.cache:
            self.cache[key] = self._lookup(key[0], qtype)
        result: list[Any] = self.cache[key]
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result

    def _lookup(self, name: str, qtype: str) -> list[Any]:
        if time.monotonic() > self._deadline:
            raise spf.TempError("DNS Error: exceeded max query lookup time")
        answer = self._resolver.query(name, qtype)
        if answer.status is DnsStatus.TEMPFAIL:
            raise spf.TempError(f"DNS {answer.error}")
        return _for_pyspf(qtype, answer)


def _for_pyspf(qtype: str, answer: DnsResult) -> list[Any]:
    """Records in the shapes pyspf's own dnspython driver produces."""
    if qtype in ("TXT", "SPF"):
        return [(blob,) for blob in answer.blobs]
    if qtype == "MX":
        pairs = [text.split(" ", 1) for text in answer.texts]
        return [(int(pref), exchange) for pref, exchange in pairs]
    return answer.texts


def check_spf(resolver: Resolver, ip: str, helo: str, mail_from: str | None, *,
              lifetime: float = 20.0) -> SpfResult:
    """Evaluate SPF for the client ``ip`` and MAIL FROM (``""``/``None`` = null
    sender: the HELO identity ``postmaster@helo`` is checked instead).

    ``lifetime`` bounds the whole evaluation (RFC 7208 4.6.4 says at least
    20 seconds). Never raises. ``temperror`` is DNS trouble only (a failed or
    timed-out look-up, or the lifetime spent waiting for DNS); anything else
    pyspf raises is ``permerror``, so no defect of the input can switch DMARC
    off through an aligned SPF ``temperror``.
    """
    sender = mail_from or ""
    scope = "mailfrom" if sender else "helo"
    domain = (sender.rpartition("@")[2] if "@" in sender else sender) or helo
    try:
        query = _GatewayQuery(resolver, lifetime, i=ip, s=sender, h=helo, strict=True)
        domain = query.o or domain
        result, _code, explanation = query.check()
    except spf.TempError as exc:
        return SpfResult("temperror", ascii_domain(domain), f"TempError: {exc}", scope)
    except Exception as exc:  # pyspf on input it does not expect: a defect, not DNS trouble
        return SpfResult("permerror", ascii_domain(domain), f"{type(exc).__name__}: {exc}", scope)
    if result not in SPF_RESULTS:
        result = "permerror"  # pyspf's "ambiguous", or anything else it may add
    return SpfResult(result, ascii_domain(str(domain)), str(explanation), scope)
