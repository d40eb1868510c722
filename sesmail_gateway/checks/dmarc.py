"""DMARC (RFC 7489): the author domain, policy discovery, alignment, ``pct``.

* The RFC5322.From domain comes from the raw header block, read by the
  linear parser in rfc5322.py (never the standard library's, which recurses
  on nested comments). No From, several From fields, a From that does not
  parse, addresses of different domains, or no domain at all are the
  RFC 7489 6.6.1 cases: result ``permerror`` with policy and disposition
  ``reject`` and ``reason`` one of :data:`FROM_PROBLEMS`.
* The record is ``TXT _dmarc.<from-domain>``, else ``_dmarc.<organisational
  domain>`` (Public Suffix List, bundled with ``publicsuffixlist``: never
  fetched at run time), looked up through the daemon's resolver so its cache
  and the test DNS apply; then parsed by checkdmarc's parser. ``sp`` applies
  when the record came from the organisational domain.
* Relaxed alignment compares organisational domains, strict the exact names,
  for the SPF-authenticated domain (``aspf``: the MAIL FROM domain, or the
  HELO name for a null sender, as RFC 7208 2.4 checks it) and each DKIM pass
  ``d=`` (``adkim``). A DKIM signature with ``l=`` short of the body is ``neutral``
  (see dkim.py) and never aligns.
* ``pct``: checkdmarc (RFC 9989) no longer reads it, so it is read here. A
  failing message not sampled gets the next less strict policy (6.6.4).
* Several records, or an invalid one: ``permerror``, no policy applied
  (6.6.3). A DNS failure, or a temporary error of an authentication that
  would have aligned while nothing else passed: ``temperror``, no policy.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from checkdmarc.dmarc import parse_dmarc_record
from checkdmarc.utils import get_base_domain

from sesmail_gateway.checks.dkim import DkimResult
from sesmail_gateway.checks.dns import DnsStatus, Resolver, ascii_domain
from sesmail_gateway.checks.headers import RawField, header_fields, unfold
from sesmail_gateway.checks.rfc5322 import Unparseable, mailbox_addresses
from sesmail_gateway.checks.spf import SpfResult

__all__ = ["CHECK_FAILED", "FROM_PROBLEMS", "DmarcResult", "check_dmarc", "from_domain", "is_aligned",
           "organizational_domain"]

FROM_PROBLEMS = ("no-from", "multiple-from", "unparseable-from", "multiple-from-domains", "no-from-domain")
#: The reason of the ``permerror`` given when the DMARC check itself breaks.
CHECK_FAILED = "check-failed"
_WEAKER = {"reject": "quarantine", "quarantine": "none", "none": "none"}
_VERSION = re.compile(r"\s*[vV]\s*=\s*DMARC1\s*(;|$)")
_REPORT_TAG = re.compile(r"\s*ru[af]\s*=", re.IGNORECASE)
_PCT = re.compile(r"(?:^|;)\s*pct\s*=\s*(\d{1,3})\s*(?:;|$)", re.IGNORECASE)


@dataclass(frozen=True)
class DmarcResult:
    """``policy`` is the published policy that applies (p, or sp for a
    subdomain); ``disposition`` what to do after ``pct`` sampling (``none``
    unless the result is ``fail`` or a From problem)."""

    result: str
    from_domain: str = ""
    policy: str = "none"
    disposition: str = "none"
    aligned: tuple[str, ...] = ()
    reason: str = ""
    record_domain: str = ""
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2 via the Public Suffix List (``mail.example.co.uk`` -> ``example.co.uk``)."""
    return _base_domain(domain.rstrip(".").lower())


@functools.lru_cache(maxsize=4096)
def _base_domain(domain: str) -> str:
    """The list's answer, remembered: each message asks it for the same few domains several times."""
    return str(get_base_domain(domain))


def is_aligned(identifier: str, author_domain: str, mode: str) -> bool:
    """Strict (``"s"``): the same name; relaxed: the same organisational domain."""
    left, right = identifier.rstrip(".").lower(), author_domain.rstrip(".").lower()
    if not left or not right:
        return False
    return left == right if mode == "s" else organizational_domain(left) == organizational_domain(right)


def _address_domain(address: str) -> str:
    domain = address.rpartition("@")[2].strip()
    if domain.startswith("[") or any(c in domain for c in " <>()@,;:\\\""):
        return ""  # a domain literal or debris: no domain to evaluate
    return ascii_domain(domain)


def from_domain(message: bytes, fields: Sequence[RawField] | None = None) -> tuple[str, str]:
    """``(domain, "")`` for the one author domain, or ``("", problem)``; ``fields``: the message's
    header fields, when the caller has them already."""
    fields = [f for f in (header_fields(message) if fields is None else fields) if f.is_named("from")]
    if not fields:
        return "", "no-from"
    if len(fields) > 1:
        return "", "multiple-from"
    try:
        addresses = [addr for addr in mailbox_addresses(unfold(fields[0].value)) if "@" in addr]
    except Unparseable:
        return "", "unparseable-from"
    domains = {_address_domain(addr) for addr in addresses}
    if not domains or "" in domains:
        return "", "no-from-domain"
    if len(domains) > 1:
        return "", "multiple-from-domains"
    return domains.pop(), ""


def check_dmarc(resolver: Resolver, message: bytes, spf: SpfResult, dkim: Sequence[DkimResult], *,
                rng: Callable[[], float] = random.random, fields: Sequence[RawField] | None = None) -> DmarcResult:
    """Evaluate DMARC for ``message`` given the SPF and DKIM verdicts. ``rng``
    returns a float in [0, 1) for ``pct`` sampling. Never raises."""
    author, problem = from_domain(message, fields)
    if problem:
        return DmarcResult("permerror", policy="reject", disposition="reject", reason=problem)
    found = _discover(resolver, author)
    if isinstance(found, DmarcResult):
        return found
    record, record_domain = found
    try:
        p, sp, adkim, aspf = _policy_tags(record, record_domain)
    except Exception:  # checkdmarc's DMARCError family, or its grammar giving up
        return DmarcResult("permerror", author, reason="invalid-record", record_domain=record_domain)
    policy = sp if record_domain != author else p
    match = _PCT.search(record)
    pct = int(match.group(1)) if match and int(match.group(1)) <= 100 else 100
    base = DmarcResult("none", author, policy, "none", (), "", record_domain, pct, adkim, aspf)
    return _evaluate(base, spf, dkim, rng)


@functools.lru_cache(maxsize=4096)
def _policy_tags(record: str, record_domain: str) -> tuple[str, str, str, str]:
    """(p, sp, adkim, aspf) of a record; parsed once per distinct record (parsing is the slow part)."""
    tags = parse_dmarc_record(_without_report_uris(record), record_domain)["tags"]
    return (str(tags["p"]["value"]), str(tags["sp"]["value"]),
            str(tags["adkim"]["value"]), str(tags["aspf"]["value"]))


def _without_report_uris(record: str) -> str:
    """checkdmarc verifies rua/ruf destinations over DNS; we send no reports."""
    return ";".join(part for part in record.split(";") if not _REPORT_TAG.match(part))


def _discover(resolver: Resolver, author: str) -> tuple[str, str] | DmarcResult:
    """(record, the domain it was found at), or the final result when there is none."""
    for candidate in dict.fromkeys((author, organizational_domain(author))):
        answer = resolver.txt(f"_dmarc.{candidate}")
        if answer.status is DnsStatus.TEMPFAIL:
            return DmarcResult("temperror", author, reason="dns-temperror")
        records = [text for text in answer.texts if _VERSION.match(text)]
        if len(records) > 1:
            return DmarcResult("permerror", author, reason="multiple-records", record_domain=candidate)
        if records:
            return records[0].strip(), candidate
    return DmarcResult("none", author, reason="no-record")


def _evaluate(base: DmarcResult, spf: SpfResult, dkim: Sequence[DkimResult],
              rng: Callable[[], float]) -> DmarcResult:
    author = base.from_domain
    spf_aligns = is_aligned(spf.domain, author, base.aspf)
    dkim_aligning = [r for r in dkim if is_aligned(r.domain, author, base.adkim)]
    aligned = tuple(name for name, ok in (
        ("spf", spf_aligns and spf.result == "pass"),
        ("dkim", any(r.result == "pass" for r in dkim_aligning)),
    ) if ok)
    if aligned:
        return replace(base, result="pass", aligned=aligned, reason="aligned")
    if (spf_aligns and spf.result == "temperror") or any(r.result == "temperror" for r in dkim_aligning):
        return replace(base, result="temperror", reason="auth-temperror")
    if rng() * 100 < base.pct:
        return replace(base, result="fail", disposition=base.policy, reason="not-aligned")
    return replace(base, result="fail", disposition=_WEAKER[base.policy], reason="sampled-out")
