"""DMARC end to end: real DNS, messages signed at test time, then the policy table."""

from __future__ import annotations

import json

import authres
import pytest

from sesmail_gateway.checks import Verdicts, authentication_results, decide, evaluate
from sesmail_gateway.checks.dns import DnsResult, Resolver
from tests.checks_fixtures import (
    make_message,
    rsa_signer,
)
from tests.dnsserver import TestDNSServer

AUTHOR_IP = "192.0.2.10"   # example.org's own outbound server
ESP_IP = "198.51.100.20"   # a mailing service sending for example.org
STRANGER_IP = "203.0.113.66"


@pytest.fixture(name="zone")
def zone_fixture(dns_server: TestDNSServer) -> TestDNSServer:
    dns_server.add("example.org", "TXT", f"v=spf1 ip4:{AUTHOR_IP} -all")
    dns_server.add("mail.example.org", "TXT", f"v=spf1 ip4:{AUTHOR_IP} -all")
    dns_server.add("esp.example", "TXT", f"v=spf1 ip4:{ESP_IP} -all")
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@example.org")
    return dns_server


def check(resolver: Resolver, message: bytes, ip: str, mail_from: str, rng: float = 0.0) -> Verdicts:
    return evaluate(message, ip=ip, helo="client.test", mail_from=mail_from, resolver=resolver,
                    now=1.0, rng=lambda: rng)


def test_pass_through_spf_alignment_only(zone: TestDNSServer, resolver: Resolver) -> None:
    verdicts = check(resolver, make_message(), AUTHOR_IP, "bounce@example.org")
    assert verdicts.dmarc is not None
    assert (verdicts.dmarc.result, verdicts.dmarc.aligned) == ("pass", ("spf",))
    assert verdicts.dkim == ()
    assert decide(verdicts).action == "accept"


def test_pass_through_dkim_alignment_only(zone: TestDNSServer, resolver: Resolver) -> None:
    signer = rsa_signer("example.org")
    signer.publish(zone)
    verdicts = check(resolver, signer.sign(make_message()), ESP_IP, "bounces@esp.example")
    assert verdicts.spf.result == "pass" and verdicts.spf.domain == "esp.example"
    assert verdicts.dmarc is not None
    assert (verdicts.dmarc.result, verdicts.dmarc.aligned) == ("pass", ("dkim",))


@pytest.mark.parametrize(("policy", "action"), [
    ("none", "accept"), ("quarantine", "quarantine"), ("reject", "reject"),
])
def test_fail_applies_the_published_policy(zone: TestDNSServer, resolver: Resolver,
                                           policy: str, action: str) -> None:
    zone.remove("_dmarc.example.org")
    zone.add("_dmarc.example.org", "TXT", f"v=DMARC1; p={policy}")

    verdicts = check(resolver, make_message(), STRANGER_IP, "spoof@example.org")

    assert verdicts.dmarc is not None
    assert (verdicts.dmarc.result, verdicts.dmarc.policy, verdicts.dmarc.disposition) == (
        "fail", policy, policy)
    decision = decide(verdicts, dmarc_mode="enforce")
    assert decision.action == action
    assert decision.reply_key == (None if action == "accept" else "dmarc")
    assert decide(verdicts, dmarc_mode="monitor").action == "accept"


def test_subdomain_policy_from_the_organisational_record(zone: TestDNSServer, resolver: Resolver) -> None:
    zone.remove("_dmarc.example.org")
    zone.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject; sp=quarantine")

    verdicts = check(resolver, make_message(from_="news@news.example.org"), STRANGER_IP, "x@news.example.org")

    assert verdicts.dmarc is not None
    assert (verdicts.dmarc.record_domain, verdicts.dmarc.policy) == ("example.org", "quarantine")
    assert decide(verdicts).action == "quarantine"


def test_org_domain_fallback_and_the_subdomains_own_record(zone: TestDNSServer, resolver: Resolver) -> None:
    message = make_message(from_="a@deep.sub.example.org")
    fallback = check(resolver, message, STRANGER_IP, "a@deep.sub.example.org").dmarc
    assert fallback is not None and (fallback.record_domain, fallback.policy) == ("example.org", "reject")
    assert zone.query_count("_dmarc.deep.sub.example.org") == 1
    assert zone.query_count("_dmarc.sub.example.org") == 0  # RFC 7489: straight to the org domain

    zone.add("_dmarc.deep.sub.example.org", "TXT", "v=DMARC1; p=none")
    own = check(Resolver([zone.address], timeout=0.5), message, STRANGER_IP, "a@deep.sub.example.org").dmarc
    assert own is not None and (own.record_domain, own.policy) == ("deep.sub.example.org", "none")


@pytest.mark.parametrize(("mode", "expected"), [("r", "pass"), ("s", "fail")])
def test_spf_alignment_relaxed_and_strict(zone: TestDNSServer, resolver: Resolver,
                                          mode: str, expected: str) -> None:
    zone.remove("_dmarc.example.org")
    zone.add("_dmarc.example.org", "TXT", f"v=DMARC1; p=reject; aspf={mode}")
    verdicts = check(resolver, make_message(), AUTHOR_IP, "bounce@mail.example.org")
    assert verdicts.spf.result == "pass"
    assert verdicts.dmarc is not None and verdicts.dmarc.result == expected


@pytest.mark.parametrize(("mode", "expected"), [("r", "pass"), ("s", "fail")])
def test_dkim_alignment_relaxed_and_strict(zone: TestDNSServer, resolver: Resolver,
                                           mode: str, expected: str) -> None:
    zone.remove("_dmarc.example.org")
    zone.add("_dmarc.example.org", "TXT", f"v=DMARC1; p=reject; adkim={mode}")
    signer = rsa_signer("mail.example.org")
    signer.publish(zone)
    verdicts = check(resolver, signer.sign(make_message()), ESP_IP, "bounces@esp.example")
    assert verdicts.dmarc is not None and verdicts.dmarc.result == expected


@pytest.mark.parametrize(("pct", "draw", "disposition", "reason"), [
    (0, 0.0, "quarantine", "sampled-out"),      # pct=0: never selected -> next weaker policy
    (50, 0.70, "quarantine", "sampled-out"),
    (50, 0.20, "reject", "not-aligned"),
])
def test_pct_sampling(zone: TestDNSServer, resolver: Resolver, pct: int, draw: float,
                      disposition: str, reason: str) -> None:
    zone.remove("_dmarc.example.org")
    zone.add("_dmarc.example.org", "TXT", f"v=DMARC1; p=reject; pct={pct}")
    verdicts = check(resolver, make_message(), STRANGER_IP, "spoof@example.org", rng=draw)
    assert verdicts.dmarc is not None
    assert (verdicts.dmarc.pct, verdicts.dmarc.disposition, verdicts.dmarc.reason) == (pct, disposition, reason)


def test_partial_body_signature_does_not_align(zone: TestDNSServer, resolver: Resolver) -> None:
    signer = rsa_signer("example.org")
    signer.publish(zone)
    message = signer.sign(make_message(), length=True) + b"Appended by someone else.\r\n"
    verdicts = check(resolver, message, ESP_IP, "bounces@esp.example")
    assert verdicts.dkim[0].partial_body
    assert verdicts.dmarc is not None and verdicts.dmarc.result == "fail"


def test_multiple_from_is_rejected_under_enforce_and_tagged_under_monitor(
    zone: TestDNSServer, resolver: Resolver,
) -> None:
    message = make_message(extra=b"From: ceo@bank.example\r\n")
    verdicts = check(resolver, message, AUTHOR_IP, "bounce@example.org")
    assert verdicts.dmarc is not None
    assert (verdicts.dmarc.result, verdicts.dmarc.reason) == ("permerror", "multiple-from")
    assert (decide(verdicts, dmarc_mode="enforce").action, decide(verdicts, dmarc_mode="enforce").reply_key) == (
        "reject", "from")
    assert decide(verdicts, dmarc_mode="monitor").action == "accept"


@pytest.mark.parametrize(("records", "reason"), [
    (["v=DMARC1; p=reject", "v=DMARC1; p=none"], "multiple-records"),
    (["v=DMARC1; p=sometimes"], "invalid-record"),
])
def test_unusable_records_are_permerror_and_apply_no_policy(
        dns_server: TestDNSServer, resolver: Resolver, records: list[str], reason: str) -> None:
    for record in records:
        dns_server.add("_dmarc.example.org", "TXT", record)
    verdicts = check(resolver, make_message(), STRANGER_IP, "spoof@example.org")
    assert verdicts.dmarc is not None
    assert (verdicts.dmarc.result, verdicts.dmarc.reason) == ("permerror", reason)
    assert decide(verdicts).action == "accept"


def test_no_record_is_none(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("_dmarc.example.org", "TXT", "not a dmarc record")
    verdicts = check(resolver, make_message(), STRANGER_IP, "x@example.org")
    assert verdicts.dmarc is not None and verdicts.dmarc.result == "none"


def test_dns_failure_is_temperror_and_never_rejects(zone: TestDNSServer) -> None:
    resolver = Resolver([zone.address], timeout=0.3)
    zone.set_timeout("_dmarc.example.org")
    verdicts = check(resolver, make_message(), STRANGER_IP, "spoof@example.org")
    assert verdicts.dmarc is not None and verdicts.dmarc.result == "temperror"
    assert decide(verdicts, spf_fail="reject").action == "accept"


def test_aligned_dkim_key_timeout_is_temperror_not_fail(zone: TestDNSServer) -> None:
    resolver = Resolver([zone.address], timeout=0.3)
    signer = rsa_signer("example.org")
    zone.set_timeout(signer.key_name)
    verdicts = check(resolver, signer.sign(make_message()), ESP_IP, "bounces@esp.example")
    assert verdicts.dkim[0].result == "temperror"
    assert verdicts.dmarc is not None and verdicts.dmarc.result == "temperror"
    assert decide(verdicts).action == "accept"


def test_verdicts_serialise_and_render_a_parseable_header(zone: TestDNSServer, resolver: Resolver) -> None:
    signer = rsa_signer("example.org")
    signer.publish(zone)
    verdicts = check(resolver, signer.sign(make_message()), AUTHOR_IP, "bounce@example.org")

    data = json.loads(json.dumps(verdicts.to_dict()))
    assert Verdicts.from_dict(data) == verdicts
    assert data["dmarc"]["aligned"] == ["spf", "dkim"]

    header = authres.AuthenticationResultsHeader.parse(authentication_results("mx.example.com", verdicts))
    assert header.authserv_id == "mx.example.com"
    assert [(r.method, r.result) for r in header.results] == [("spf", "pass"), ("dkim", "pass"),
                                                              ("dmarc", "pass")]


def test_spf_verdict_from_mail_from_time_is_reused(zone: TestDNSServer, resolver: Resolver) -> None:
    from sesmail_gateway.checks import check_spf

    spf = check_spf(resolver, AUTHOR_IP, "client.test", "bounce@example.org")
    queries = zone.query_count("example.org", "TXT")
    verdicts = evaluate(make_message(), ip=AUTHOR_IP, helo="client.test", mail_from="bounce@example.org",
                        resolver=Resolver([zone.address]), spf=spf)
    assert verdicts.spf is spf and zone.query_count("example.org", "TXT") == queries
    assert verdicts.dmarc is not None and verdicts.dmarc.result == "pass"


@pytest.mark.parametrize("message", [b"", b"\x00\xff\xfe garbage", b"From: <>\r\n\r\n",
                                     b"DKIM-Signature: \xff\r\nARC-Seal: i=1\r\nFrom: a@example.org\r\n\r\n"])
def test_evaluate_never_raises(zone: TestDNSServer, resolver: Resolver, message: bytes) -> None:
    verdicts = check(resolver, message, STRANGER_IP, "")
    assert verdicts.dmarc is not None
    assert decide(verdicts).action in ("accept", "reject")


# -- Found by fuzzing: the From header and broken checks never let a forgery skip its policy ----------

def nested_comments(depth: int, *, closed: bool = True) -> bytes:
    return b"(" * depth + b"x" + (b")" * depth if closed else b"")


def test_deeply_nested_comments_in_from_do_not_bypass_p_reject(zone: TestDNSServer, resolver: Resolver) -> None:
    """The standard library's address parser recursed once per comment; RecursionError made
    DMARC temperror and a forgery of a p=reject domain was delivered."""
    message = make_message(from_=(nested_comments(50_000) + b" <ceo@example.org>").decode())
    verdicts = check(resolver, message, STRANGER_IP, "spoof@attacker.example")
    assert verdicts.dmarc is not None
    assert (verdicts.dmarc.result, verdicts.dmarc.from_domain) == ("fail", "example.org")
    assert (decide(verdicts, dmarc_mode="enforce").action, decide(verdicts).reply_key) == ("reject", "dmarc")


def test_a_from_that_does_not_parse_is_refused_under_enforce(zone: TestDNSServer, resolver: Resolver) -> None:
    """RFC 7489 6.6.1: no single author domain can be read, so the message is refused (enforce)."""
    message = make_message(from_=(nested_comments(50_000, closed=False) + b" <ceo@example.org>").decode())
    verdicts = check(resolver, message, STRANGER_IP, "spoof@attacker.example")
    assert verdicts.dmarc is not None
    assert (verdicts.dmarc.result, verdicts.dmarc.reason) == ("permerror", "unparseable-from")
    decision = decide(verdicts, dmarc_mode="enforce")
    assert (decision.action, decision.reply_key) == ("reject", "from")
    assert decide(verdicts, dmarc_mode="monitor").action == "accept"


class BrokenResolver(Resolver):
    """A resolver with a defect: every TXT lookup raises (stands in for a bug in a check)."""

    def txt(self, name: str) -> DnsResult:
        raise RuntimeError("a defect, not a DNS problem")


def test_a_check_that_breaks_is_permerror_never_temperror(zone: TestDNSServer) -> None:
    """temperror means DNS trouble; an exception is not, and must not switch the policy off."""
    resolver = BrokenResolver([zone.address], timeout=0.5)
    verdicts = check(resolver, make_message(), STRANGER_IP, "spoof@example.org")
    assert verdicts.dmarc is not None
    assert (verdicts.dmarc.result, verdicts.dmarc.reason) == ("permerror", "check-failed")
    assert verdicts.spf.result != "temperror"
    decision = decide(verdicts, dmarc_mode="enforce")
    assert (decision.action, decision.reply_key) == ("quarantine", "dmarc")
    assert decide(verdicts, dmarc_mode="monitor").action == "accept"
