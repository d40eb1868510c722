"""The shared resolver against a real DNS server on 127.0.0.1."""

from __future__ import annotations

import threading

import dkim
import pytest

from sesmail_gateway.checks.dns import FAILURE_TTL, DkimTxtLookup, DnsStatus, Resolver, confirmed_reverse_name
from tests.dnsserver import TestDNSServer, free_udp_port
from tests.helpers import Clock


def test_answers_ok_nxdomain_nodata(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("example.test", "A", "192.0.2.1")
    dns_server.add("example.test", "AAAA", "2001:db8::1")
    dns_server.add("example.test", "MX", (10, "mx.example.test"))
    dns_server.add("1.2.0.192.in-addr.arpa", "PTR", "host.example.test")

    assert resolver.query("example.test", "A").records == ("192.0.2.1",)
    assert resolver.query("Example.TEST.", "AAAA").records == ("2001:db8::1",)
    assert resolver.query("example.test", "MX").records == ("10 mx.example.test",)
    assert resolver.query("1.2.0.192.in-addr.arpa", "PTR").records == ("host.example.test",)
    assert resolver.query("missing.example.test", "A").status is DnsStatus.NXDOMAIN
    nodata = resolver.query("example.test", "TXT")
    assert nodata.status is DnsStatus.NODATA and nodata.records == ()


def test_long_txt_is_joined_from_255_byte_strings_and_fetched_over_tcp(
        dns_server: TestDNSServer, resolver: Resolver) -> None:
    value = "v=DKIM1; p=" + "A" * 700
    dns_server.add("big.example.test", "TXT", value)
    dns_server.add("big.example.test", "TXT", ["v=spf1 ", "-all"])

    result = resolver.txt("big.example.test")

    assert result.status is DnsStatus.OK
    assert sorted(result.records) == sorted([value.encode(), b"v=spf1 -all"])  # type: ignore[type-var]
    assert dns_server.query_count("big.example.test", "TXT") == 2  # UDP truncated, then TCP


def test_cname_chain_is_followed_and_a_loop_is_nodata(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("alias.example.test", "CNAME", "real.example.test")
    dns_server.add("real.example.test", "TXT", "hello")
    dns_server.add("loop1.example.test", "CNAME", "loop2.example.test")
    dns_server.add("loop2.example.test", "CNAME", "loop1.example.test")

    assert resolver.txt("alias.example.test").records == (b"hello",)
    assert resolver.txt("loop1.example.test").status is DnsStatus.NODATA


@pytest.mark.parametrize("fault", ["timeout", "servfail"])
def test_server_faults_are_temporary(dns_server: TestDNSServer, fault: str) -> None:
    now = [1000.0]
    resolver = Resolver([dns_server.address], timeout=0.3, clock=lambda: now[0])
    dns_server.add("bad.example.test", "A", "192.0.2.1")
    (dns_server.set_timeout if fault == "timeout" else dns_server.set_servfail)("bad.example.test")

    result = resolver.query("bad.example.test", "A")

    assert result.status is DnsStatus.TEMPFAIL and result.error
    dns_server.set_timeout("bad.example.test", False)
    dns_server.set_servfail("bad.example.test", False)
    sent = resolver.queries_sent
    # A failure is remembered briefly (RFC 2308 7.1), so a dead server is not asked by every message ...
    assert resolver.query("bad.example.test", "A").status is DnsStatus.TEMPFAIL
    assert resolver.queries_sent == sent
    # ... and only briefly.
    now[0] += FAILURE_TTL + 1
    assert resolver.query("bad.example.test", "A").status is DnsStatus.OK


def test_dead_server_is_temporary_failure() -> None:
    resolver = Resolver([f"127.0.0.1:{free_udp_port()}"], timeout=0.3)
    assert resolver.txt("example.test").status is DnsStatus.TEMPFAIL


def test_cache_honours_ttl_with_injected_clock(dns_server: TestDNSServer) -> None:
    clock = Clock()
    resolver = Resolver([dns_server.address], timeout=0.5, clock=clock)
    dns_server.add("ttl.example.test", "TXT", "first", ttl=60)

    assert resolver.txt("ttl.example.test").records == (b"first",)
    clock.now += 59
    dns_server.remove("ttl.example.test")
    dns_server.add("ttl.example.test", "TXT", "second", ttl=60)
    cached = resolver.txt("TTL.example.test.")
    assert cached.records == (b"first",) and cached.ttl == 1
    assert dns_server.query_count("ttl.example.test", "TXT") == 1
    assert resolver.queries_sent == 1

    clock.now += 2
    assert resolver.txt("ttl.example.test").records == (b"second",)
    assert dns_server.query_count("ttl.example.test", "TXT") == 2


def test_negative_answers_are_cached_for_the_soa_minimum(dns_server: TestDNSServer) -> None:
    clock = Clock()
    dns_server.negative_ttl = 30
    resolver = Resolver([dns_server.address], timeout=0.5, clock=clock)

    first = resolver.txt("_dmarc.nothing.test")
    assert first.status is DnsStatus.NXDOMAIN and first.ttl == 30
    clock.now += 29
    assert resolver.txt("_dmarc.nothing.test").status is DnsStatus.NXDOMAIN
    assert dns_server.query_count("_dmarc.nothing.test") == 1
    clock.now += 2
    dns_server.add("_dmarc.nothing.test", "TXT", "v=DMARC1; p=none")
    assert resolver.txt("_dmarc.nothing.test").status is DnsStatus.OK
    assert dns_server.query_count("_dmarc.nothing.test") == 2


def test_cache_is_bounded(dns_server: TestDNSServer) -> None:
    resolver = Resolver([dns_server.address], timeout=0.5, max_entries=3)
    for i in range(5):
        dns_server.add(f"n{i}.example.test", "A", f"192.0.2.{i + 1}")
        resolver.query(f"n{i}.example.test", "A")
    assert resolver.cache_size() == 3
    resolver.query("n0.example.test", "A")  # evicted: asked again
    assert dns_server.query_count("n0.example.test") == 2


def test_one_resolver_serves_many_threads(dns_server: TestDNSServer, resolver: Resolver) -> None:
    for i in range(20):
        dns_server.add(f"t{i}.example.test", "TXT", f"value {i}")
    errors: list[str] = []

    def worker(offset: int) -> None:
        for j in range(40):
            i = (offset + j) % 20
            result = resolver.txt(f"t{i}.example.test")
            if result.records != (f"value {i}".encode(),):
                errors.append(f"{i}: {result}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert dns_server.query_count() <= 20 * 8  # the cache absorbed most of the 320 lookups


def test_dkim_dnsfunc_reports_what_dns_said(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("sel._domainkey.example.test", "TXT", "v=DKIM1; p=abc")
    dns_server.set_timeout("slow._domainkey.example.test")
    lookup = DkimTxtLookup(resolver)

    assert lookup(b"sel._domainkey.example.test.") == b"v=DKIM1; p=abc"
    assert lookup(b"none._domainkey.example.test.") is None
    with pytest.raises(dkim.DnsTimeoutError):
        lookup(b"slow._domainkey.example.test.")
    status = lookup.result_for("none._domainkey.example.test")
    assert status is not None and status.status is DnsStatus.NXDOMAIN


@pytest.mark.parametrize("server", ["dns.example.test:53", "127.0.0.1:99999"])
def test_servers_must_be_ip_host_port(server: str) -> None:
    with pytest.raises(ValueError):
        Resolver([server])


def test_reverse_name_counts_only_when_it_resolves_back(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("5.2.0.192.in-addr.arpa", "PTR", "mail.sender.test")
    dns_server.add("mail.sender.test", "A", "192.0.2.5")
    dns_server.add("6.2.0.192.in-addr.arpa", "PTR", "liar.sender.test")
    dns_server.add("liar.sender.test", "A", "198.51.100.1")  # claims a name that is not its own
    assert confirmed_reverse_name(resolver, "192.0.2.5") == "mail.sender.test"
    assert confirmed_reverse_name(resolver, "192.0.2.6") == ""
    assert confirmed_reverse_name(resolver, "192.0.2.7") == ""  # no PTR at all
    assert confirmed_reverse_name(resolver, "not an address") == ""


def test_cache_only_answers_from_the_cache_and_records_a_miss(dns_server: TestDNSServer, resolver: Resolver) -> None:
    """A miss in cache-only mode is neither sent nor cached: a later query asks the server."""
    dns_server.add("cached.test", "TXT", "v=spf1 -all")
    resolver.txt("cached.test")
    sent = dns_server.query_count()
    with resolver.cache_only() as probe:
        assert resolver.txt("cached.test").records == (b"v=spf1 -all",)
        assert not probe.missed
        missing = resolver.txt("other.test")
        assert probe.missed
    assert missing.status is DnsStatus.TEMPFAIL
    assert dns_server.query_count() == sent
    dns_server.add("other.test", "TXT", "found")
    assert resolver.txt("other.test").records == (b"found",)  # the miss's tempfail was not remembered
    assert dns_server.query_count() == sent + 1


def test_cache_only_holds_for_its_own_thread(dns_server: TestDNSServer, resolver: Resolver) -> None:
    dns_server.add("elsewhere.test", "TXT", "x")
    answers: list[DnsStatus] = []
    with resolver.cache_only() as probe:
        thread = threading.Thread(target=lambda: answers.append(resolver.txt("elsewhere.test").status))
        thread.start()
        thread.join()
    assert answers == [DnsStatus.OK] and not probe.missed
