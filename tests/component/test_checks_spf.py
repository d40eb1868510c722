"""SPF through pyspf and the shared resolver, against a real DNS server."""

from __future__ import annotations

import pytest

from sesmail_gateway.checks.dns import Resolver
from sesmail_gateway.checks.spf import check_spf
from tests.dnsserver import TestDNSServer, free_udp_port

CLIENT = "192.0.2.10"


@pytest.mark.parametrize(("record", "expected"), [
    ("v=spf1 ip4:192.0.2.0/24 -all", "pass"),
    ("v=spf1 ip4:198.51.100.1 -all", "fail"),
    ("v=spf1 ip4:198.51.100.1 ~all", "softfail"),
    ("v=spf1 ?all", "neutral"),
    ("v=spf1 ip4:192.0.2.10 -all bogus:mechanism", "permerror"),
])
def test_results_for_published_policies(dns_server: TestDNSServer, resolver: Resolver,
                                        record: str, expected: str) -> None:
    dns_server.add("sender.test", "TXT", record)

    verdict = check_spf(resolver, CLIENT, "mail.sender.test", "alice@sender.test")

    assert (verdict.result, verdict.domain, verdict.scope) == (expected, "sender.test", "mailfrom")


def test_none_without_a_record(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("sender.test", "TXT", "some unrelated text")
    assert check_spf(resolver, CLIENT, "helo.test", "alice@sender.test").result == "none"
    assert check_spf(resolver, CLIENT, "helo.test", "alice@nowhere.test").result == "none"


def test_fail_carries_the_published_explanation(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 -all exp=why.sender.test")
    dns_server.add("why.sender.test", "TXT", "%{i} may not send for %{d}")

    verdict = check_spf(resolver, CLIENT, "helo.test", "alice@sender.test")

    assert verdict.result == "fail"
    assert verdict.explanation == "192.0.2.10 may not send for sender.test"


def test_a_mx_include_and_ipv6(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 mx include:_spf.esp.test -all")
    dns_server.add("sender.test", "MX", (10, "mx.sender.test"))
    dns_server.add("mx.sender.test", "A", "203.0.113.5")
    dns_server.add("_spf.esp.test", "TXT", "v=spf1 a:out.esp.test -all")
    dns_server.add("out.esp.test", "AAAA", "2001:db8::25")

    assert check_spf(resolver, "203.0.113.5", "h.test", "a@sender.test").result == "pass"
    assert check_spf(resolver, "2001:db8::25", "h.test", "a@sender.test").result == "pass"
    assert check_spf(resolver, "2001:db8::26", "h.test", "a@sender.test").result == "fail"


def test_more_than_ten_lookups_is_permerror(dns_server: TestDNSServer, resolver: Resolver) -> None:
    includes = " ".join(f"include:i{n}.sender.test" for n in range(11))
    dns_server.add("sender.test", "TXT", f"v=spf1 {includes} -all")
    for n in range(11):
        dns_server.add(f"i{n}.sender.test", "TXT", "v=spf1 ip4:198.51.100.99 -all")

    verdict = check_spf(resolver, CLIENT, "helo.test", "alice@sender.test")

    assert verdict.result == "permerror"
    assert "Too many DNS lookups" in verdict.explanation


def test_void_lookup_limit_is_permerror(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 a:v1.sender.test a:v2.sender.test a:v3.sender.test -all")
    assert check_spf(resolver, CLIENT, "helo.test", "alice@sender.test").result == "permerror"


def test_null_sender_checks_the_helo_identity(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("mail.sender.test", "TXT", "v=spf1 ip4:192.0.2.10 -all")

    verdict = check_spf(resolver, CLIENT, "mail.sender.test", "")

    assert (verdict.result, verdict.domain, verdict.scope) == ("pass", "mail.sender.test", "helo")
    assert check_spf(resolver, "198.51.100.1", "mail.sender.test", None).result == "fail"


def test_name_that_times_out_is_temperror(dns_server: TestDNSServer) -> None:
    resolver = Resolver([dns_server.address], timeout=0.3)
    dns_server.set_timeout("sender.test")
    verdict = check_spf(resolver, CLIENT, "helo.test", "alice@sender.test")
    assert verdict.result == "temperror"


def test_include_that_fails_temporarily_is_temperror(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 include:esp.test -all")
    dns_server.set_servfail("esp.test")
    assert check_spf(resolver, CLIENT, "helo.test", "alice@sender.test").result == "temperror"


def test_dead_dns_is_temperror_never_an_exception() -> None:
    resolver = Resolver([f"127.0.0.1:{free_udp_port()}"], timeout=0.3)
    verdict = check_spf(resolver, CLIENT, "helo.test", "alice@sender.test")
    assert verdict.result == "temperror" and "DNS" in verdict.explanation


def test_bad_client_address_is_permerror_not_a_crash(resolver: Resolver) -> None:
    """temperror means DNS trouble; an input pyspf cannot use is a permanent error."""
    assert check_spf(resolver, "not-an-ip", "helo.test", "alice@sender.test").result == "permerror"


def test_repeat_checks_are_answered_from_the_cache(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 a -all")
    dns_server.add("sender.test", "A", CLIENT)
    for _ in range(5):
        assert check_spf(resolver, CLIENT, "helo.test", "alice@sender.test").result == "pass"
    assert dns_server.query_count("sender.test", "TXT") == 1
    assert dns_server.query_count("sender.test", "A") == 1
