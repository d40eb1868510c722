"""Decide what to do with a message's verdicts, and say what was found.

Checks only evaluate; this module decides, from one table, and the SMTP
handler acts. :data:`POLICY_TABLE` maps (check, outcome, the config value
that governs that check) to an action. :func:`decide` lists the message's
outcomes (From problem, DMARC, SPF) and the strictest action wins
(reject > quarantine > accept; on a tie, the earlier check names the cause).

Temporary errors never produce an outcome, so they never reject: a DMARC
``temperror`` yields no DMARC outcome, and an SPF ``fail`` is not held
against a message whose DMARC result is ``pass`` (an aligned DKIM signature
proves the author domain; SPF breaks on forwarding, RFC 7489 10.1) or
``temperror`` (it might have passed).

:func:`authentication_results` writes the RFC 8601 header; the gateway
removes look-alikes that arrived with the message using
:func:`strip_forged_authentication_results` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from sesmail_gateway.checks import rfc5322
from sesmail_gateway.checks.dmarc import CHECK_FAILED, FROM_PROBLEMS
from sesmail_gateway.checks.headers import RawField, header_fields, unfold
from sesmail_gateway.checks.verdicts import Verdicts

__all__ = ["POLICY_TABLE", "Decision", "authentication_results", "decide", "decide_scan", "for_message",
           "strip_forged_authentication_results"]

#: (check, outcome, setting) -> action; setting "*" applies whatever the config says.
POLICY_TABLE: Mapping[tuple[str, str, str], str] = {
    # RFC 7489 6.6.1: no single author domain to evaluate; refused under enforce, tagged under monitor
    ("from", "no-from", "enforce"): "reject",
    ("from", "multiple-from", "enforce"): "reject",
    ("from", "unparseable-from", "enforce"): "reject",
    ("from", "multiple-from-domains", "enforce"): "reject",
    ("from", "no-from-domain", "enforce"): "reject",
    # The DMARC check broke (a defect we did not foresee): unknown, so neither inbox nor refusal
    ("dmarc", "check-failed", "enforce"): "quarantine",
    ("dmarc", "reject", "enforce"): "reject",
    ("dmarc", "quarantine", "enforce"): "quarantine",
    ("dmarc", "none", "enforce"): "accept",
    ("dmarc", "reject", "monitor"): "accept",        # monitor only tags
    ("dmarc", "quarantine", "monitor"): "accept",
    ("dmarc", "none", "monitor"): "accept",
    ("spf", "fail", "reject"): "reject",
    ("spf", "fail", "tag"): "accept",
    # Scanning (decide_scan). A virus is refused whatever the route or the lists say.
    ("virus", "found", "*"): "reject",
    ("sender", "blocked", "*"): "reject",                  # scan.block_from or the route's block_from
    # spam: outcome from the score (reject_score / label_score), setting from the route's `spam`
    ("spam", "reject", "reject"): "reject",
    ("spam", "reject", "label"): "quarantine",             # spam = "label": never refuse, only label
    ("spam", "label", "reject"): "quarantine",
    ("spam", "label", "label"): "quarantine",
    ("spam", "reject", "allowed"): "accept",               # allow_from: no spam action, ever
    ("spam", "label", "allowed"): "accept",
    ("scan", "error", "accept"): "accept",                 # scan.on_failure; the message is tagged
    ("scan", "error", "tempfail"): "tempfail",
}


_SEVERITY = {"accept": 0, "quarantine": 1, "tempfail": 2, "reject": 3}


@dataclass(frozen=True)
class Decision:
    """``reply_key`` names the check that caused a refusal or quarantine
    (``"from"``, ``"dmarc"``, ``"spf"``), ``None`` on accept."""

    action: str
    reply_key: str | None
    reason: str


def _outcomes(verdicts: Verdicts) -> Iterator[tuple[str, str, str]]:
    dmarc = verdicts.dmarc
    if dmarc is not None and dmarc.reason in FROM_PROBLEMS:
        yield "from", dmarc.reason, f"RFC5322.From: {dmarc.reason}"
    if dmarc is not None and dmarc.reason == CHECK_FAILED:
        yield "dmarc", CHECK_FAILED, "dmarc=permerror: the DMARC check failed"
    if dmarc is not None and dmarc.result == "fail":
        yield "dmarc", dmarc.disposition, (
            f"dmarc=fail header.from={dmarc.from_domain} p={dmarc.policy} pct={dmarc.pct} "
            f"disposition={dmarc.disposition}")
    dmarc_result = dmarc.result if dmarc is not None else "none"
    if verdicts.spf.result == "fail" and dmarc_result not in ("pass", "temperror"):
        yield "spf", "fail", f"spf=fail {verdicts.spf.scope}={verdicts.spf.domain}"


def decide(verdicts: Verdicts, *, dmarc_mode: str = "enforce", spf_fail: str = "tag") -> Decision:
    """The action for a message: ``accept``, ``quarantine`` or ``reject``.
    ``dmarc_mode`` is ``checks.dmarc`` (enforce|monitor), ``spf_fail`` is
    ``checks.spf_fail`` (tag|reject). Pure; unknown combinations accept."""
    settings = {"from": dmarc_mode, "dmarc": dmarc_mode, "spf": spf_fail}
    decision = Decision("accept", None, "no policy applies")
    noted: list[str] = []
    for check, outcome, reason in _outcomes(verdicts):
        action = POLICY_TABLE.get((check, outcome, settings[check]), "accept")
        if _SEVERITY[action] > _SEVERITY[decision.action]:
            decision = Decision(action, check, reason)
        noted.append(f"{reason} ({settings[check]})")
    if decision.action == "accept" and noted:
        return Decision("accept", None, "; ".join(noted))
    return decision


def decide_scan(auth: Decision, outcomes: Iterable[tuple[str, str, str, str]]) -> Decision:
    """The action for one recipient once scanned: ``auth`` (from :func:`decide`)
    and each (check, outcome, setting, reason) of the scan, strictest wins.
    Adds ``tempfail`` (answer 451) to the actions. Pure."""
    decision, noted = auth, []
    for check, outcome, setting, reason in outcomes:
        action = POLICY_TABLE.get((check, outcome, setting)) or POLICY_TABLE.get((check, outcome, "*"), "accept")
        if _SEVERITY[action] > _SEVERITY[decision.action]:
            decision = Decision(action, check, reason)
        noted.append(f"{reason} ({setting})")
    if decision.action == "accept" and noted:
        kept = [] if decision.reason == "no policy applies" else [decision.reason]
        return Decision("accept", None, "; ".join(kept + noted))
    return decision


def for_message(decisions: Sequence[Decision]) -> Decision:
    """One action for a message from its recipients' actions (SMTP answers DATA once).

    The most lenient action wins, so no recipient loses mail its own policy
    accepts; but when the recipients disagree and the lenient action is
    accept, the message is quarantined, so no recipient finds in the inbox
    what its own policy would have refused or labelled."""
    if not decisions:
        return Decision("accept", None, "no recipients")
    lenient = min(decisions, key=lambda d: _SEVERITY[d.action])
    strict = max(decisions, key=lambda d: _SEVERITY[d.action])
    if lenient.action == "accept" and strict.action != "accept":
        return Decision("quarantine", strict.reply_key, f"{strict.reason} (for some recipients)")
    return lenient


# -- Authentication-Results (RFC 8601) --------------------------------------------------

_TOKEN = re.compile(r"^[A-Za-z0-9._+-]+$")
_FOLD = ";\r\n\t"


def _value(text: str) -> str:
    if _TOKEN.match(text):
        return text
    clean = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "?" for c in text)
    return f'"{clean}"'


def _reason(text: str) -> str:
    if not text:
        return ""
    clean = "".join(c if c.isascii() and c.isprintable() and c not in '"\\' else "'" for c in text)
    return f' reason="{clean[:120]}"'


def _resinfos(verdicts: Verdicts) -> Iterator[str]:
    spf = verdicts.spf
    prop = "smtp.helo" if spf.scope == "helo" else "smtp.mailfrom"
    yield f"spf={spf.result}" + (f" {prop}={_value(spf.domain)}" if spf.domain else "")
    if not verdicts.dkim:
        yield "dkim=none"
    for sig in verdicts.dkim:
        reason = _reason(sig.reason) if sig.result != "pass" else ""
        props = "".join(f" header.{tag}={_value(val)}" for tag, val in (("d", sig.domain), ("s", sig.selector))
                        if val)
        yield f"dkim={sig.result}{reason}{props}"
    dmarc = verdicts.dmarc
    if dmarc is not None:
        comment = f" (p={dmarc.policy} dis={dmarc.disposition})" if dmarc.record_domain else ""
        reason = _reason(dmarc.reason) if dmarc.result in ("permerror", "temperror") else ""
        author = f" header.from={_value(dmarc.from_domain)}" if dmarc.from_domain else ""
        yield f"dmarc={dmarc.result}{comment}{reason}{author}"
    if verdicts.arc.result != "none":
        yield f"arc={verdicts.arc.result}"


def authentication_results(authserv_id: str, verdicts: Verdicts) -> str:
    """One ``Authentication-Results:`` field, folded with CRLF + TAB after each
    ``;``, ASCII only, WITHOUT a trailing CRLF (the caller adds the line end
    when it prepends the field to the message)."""
    return "Authentication-Results: " + _FOLD.join([authserv_id, *_resinfos(verdicts)])


def claims_to_be(value: str, authserv_id: str) -> bool:
    """Whether an Authentication-Results value claims ``authserv_id`` (case-insensitive,
    final dot ignored), read by the RFC 8601 grammar: CFWS (nested comments with
    quoted-pairs) and then a token or quoted-string. A value that does not parse is
    treated as a claim when our name appears anywhere in it: a lenient reader may
    still take it for ours."""
    ours = authserv_id.rstrip(".").lower()
    try:
        return rfc5322.authserv_id(value).rstrip(".").lower() == ours
    except rfc5322.Unparseable:
        return ours in value.lower()


def strip_forged_authentication_results(message: bytes, authserv_id: str,
                                        fields: Sequence[RawField] | None = None) -> bytes:
    """Remove from the header block every Authentication-Results field (with
    its continuation lines) whose authserv-id is ours, case-insensitively;
    every other byte is returned untouched. Fields of other authserv-ids, and
    anything in the body, stay. Linear in the size of the header block."""
    forged = [f for f in (header_fields(message) if fields is None else fields)
              if f.is_named("authentication-results")
              and claims_to_be(unfold(f.value), authserv_id)]
    if not forged:
        return message
    parts, pos = [], 0
    for field in forged:
        parts.append(message[pos:field.start])
        pos = field.end
    parts.append(message[pos:])
    return b"".join(parts)
