"""DKIM and ARC verification of messages signed at test time, keys in the test DNS."""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import dkim
import dkim.crypto
import pytest
from dkim.canonicalization import CanonicalizationPolicy

from sesmail_gateway.checks.dkim import DkimResult, check_arc, check_dkim
from sesmail_gateway.checks.dns import Resolver
from tests.checks_fixtures import (
    Signer,
    ed25519_signer,
    make_message,
    rsa_signer,
)
from tests.dnsserver import TestDNSServer


def test_rsa_sha256_signature_passes(dns_server: TestDNSServer, resolver: Resolver) -> None:
    signer = rsa_signer("example.org")
    signer.publish(dns_server)

    results = check_dkim(signer.sign(make_message()), resolver)

    assert results == [DkimResult("pass", "example.org", "sel", "rsa-sha256")]


def test_ed25519_signature_passes(dns_server: TestDNSServer, resolver: Resolver) -> None:
    signer = ed25519_signer("example.org")
    signer.publish(dns_server)

    [result] = check_dkim(signer.sign(make_message()), resolver)

    assert (result.result, result.algorithm, result.selector) == ("pass", "ed25519-sha256", "ed")


def test_tampered_body_fails(dns_server: TestDNSServer, resolver: Resolver) -> None:
    signer = rsa_signer("example.org")
    signer.publish(dns_server)
    signed = signer.sign(make_message(body=b"Pay 10 EUR.\r\n"))

    [result] = check_dkim(signed.replace(b"Pay 10 EUR", b"Pay 99 EUR"), resolver)

    assert result.result == "fail" and "body hash" in result.reason


def test_tampered_header_fails(dns_server: TestDNSServer, resolver: Resolver) -> None:
    signer = rsa_signer("example.org")
    signer.publish(dns_server)
    signed = signer.sign(make_message(subject="Invoice"))

    [result] = check_dkim(signed.replace(b"Subject: Invoice", b"Subject: Urgent invoice"), resolver)

    assert result.result == "fail" and result.domain == "example.org"


def test_missing_key_is_permerror(dns_server: TestDNSServer, resolver: Resolver) -> None:
    signer = rsa_signer("example.org")  # not published

    [result] = check_dkim(signer.sign(make_message()), resolver)

    assert (result.result, result.reason) == ("permerror", "no key")


def test_revoked_key_is_permerror(dns_server: TestDNSServer, resolver: Resolver) -> None:
    signer = rsa_signer("example.org")
    dns_server.add(signer.key_name, "TXT", "v=DKIM1; k=rsa; p=")

    [result] = check_dkim(signer.sign(make_message()), resolver)

    assert (result.result, result.reason) == ("permerror", "key revoked")


def test_key_lookup_timeout_is_temperror(dns_server: TestDNSServer) -> None:
    resolver = Resolver([dns_server.address], timeout=0.3)
    signer = rsa_signer("example.org")
    dns_server.set_timeout(signer.key_name)

    [result] = check_dkim(signer.sign(make_message()), resolver)

    assert result.result == "temperror"


def test_every_signature_is_verified_and_recorded(dns_server: TestDNSServer, resolver: Resolver) -> None:
    author = rsa_signer("example.org")
    esp = ed25519_signer("esp.example", selector="s2024")
    unpublished = rsa_signer("forged.example", selector="x", slot=1)
    author.publish(dns_server)
    esp.publish(dns_server)
    message = unpublished.sign(esp.sign(author.sign(make_message())))

    results = check_dkim(message, resolver)

    assert [(r.domain, r.selector, r.result) for r in results] == [
        ("forged.example", "x", "permerror"),
        ("esp.example", "s2024", "pass"),
        ("example.org", "sel", "pass"),
    ]


def test_body_length_limit_short_of_the_body_is_not_a_pass(
        dns_server: TestDNSServer, resolver: Resolver) -> None:
    signer = rsa_signer("example.org")
    signer.publish(dns_server)
    signed = signer.sign(make_message(body=b"Original text.\r\n"), length=True)

    assert check_dkim(signed, resolver)[0].result == "pass"  # l= equals the whole body
    [appended] = check_dkim(signed + b"Click http://evil.example/\r\n", resolver)
    assert appended.result == "neutral" and appended.partial_body
    assert "unsigned" in appended.reason


def test_malformed_signature_is_neutral(dns_server: TestDNSServer, resolver: Resolver) -> None:
    message = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; b=\r\n" + make_message()
    [result] = check_dkim(message, resolver)
    assert result.result == "neutral" and result.domain == "example.org"


def test_unsigned_message_has_no_results(resolver: Resolver) -> None:
    assert check_dkim(make_message(), resolver) == []


def _relayed(dns_server: TestDNSServer) -> bytes:
    """A message as a forwarder re-sealed it: its A-R, then its ARC set."""
    sealer = rsa_signer("relay.example", selector="arc", slot=2)
    sealer.publish(dns_server)
    received = b"Authentication-Results: relay.example; spf=pass smtp.mailfrom=example.org\r\n" \
        + make_message()
    return sealer.arc_seal(received, "relay.example")


def test_arc_chain_passes(dns_server: TestDNSServer, resolver: Resolver) -> None:
    result = check_arc(_relayed(dns_server), resolver)
    assert result.result == "pass", result.reason


def test_arc_chain_broken_by_tampering_fails(dns_server: TestDNSServer, resolver: Resolver) -> None:
    sealed = _relayed(dns_server)
    assert check_arc(sealed.replace(b"Hello Bob.", b"Hello Eve."), resolver).result == "fail"


@pytest.mark.parametrize("fault", ["missing-key", "timeout"])
def test_arc_chain_without_its_key_fails(dns_server: TestDNSServer, fault: str) -> None:
    resolver = Resolver([dns_server.address], timeout=0.3)
    sealed = _relayed(dns_server)
    dns_server.remove("arc._domainkey.relay.example")
    if fault == "timeout":
        dns_server.set_timeout("arc._domainkey.relay.example")
    result = check_arc(sealed, resolver)
    assert result.result == "fail"
    assert ("DNS temporary failure" in result.reason) == (fault == "timeout")


def test_no_arc_headers_is_none(resolver: Resolver) -> None:
    assert check_arc(make_message(), resolver).result == "none"


def test_signatures_past_the_limit_are_not_verified(dns_server: TestDNSServer, resolver: Resolver) -> None:
    signer = rsa_signer("example.org")
    signer.publish(dns_server)
    message = make_message()
    for _ in range(3):
        message = signer.sign(message)

    results = check_dkim(message, resolver, max_signatures=2)

    assert [r.result for r in results] == ["pass", "pass", "neutral"]
    assert dns_server.query_count(signer.key_name) == 1  # one lookup per key per message


def test_key_lookups_share_one_time_budget(dns_server: TestDNSServer) -> None:
    resolver = Resolver([dns_server.address], timeout=0.3)
    message = make_message()
    for n in range(4):
        signer = rsa_signer(f"slow{n}.example")
        dns_server.set_timeout(signer.key_name)
        message = signer.sign(message)

    results = check_dkim(message, resolver, lifetime=0.2)

    # The first key timed out (DNS trouble); the others were never asked: not verified, which is
    # no DNS failure of theirs, so a forged signature placed after slow ones cannot become temperror.
    assert [r.result for r in results] == ["temperror"] + ["neutral"] * 3
    assert dns_server.query_count() == 1  # the budget was spent by the first timeout
    assert "budget" in results[-1].reason


# -- verdicts at the edges: never pass, never temperror for a defect --------------------------------

def sign_without_from(signer: Signer, message: bytes) -> bytes:
    """A valid RSA signature whose h= leaves From out. dkimpy's sign() refuses to make one, so
    this takes its steps one by one: body hash, then its own header signing."""
    verifier = dkim.DKIM(message, signature_algorithm=b"rsa-sha256")
    verifier.hasher = hashlib.sha256
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(verifier.body)).digest())
    fields = [(b"v", b"1"), (b"a", b"rsa-sha256"), (b"c", b"relaxed/simple"), (b"d", signer.domain.encode()),
              (b"s", signer.selector.encode()), (b"h", b"to : subject"), (b"bh", body_hash), (b"b", b"0" * 60)]
    value = verifier.gen_header(fields, [b"to", b"subject"], policy, b"DKIM-Signature",
                                dkim.crypto.parse_pem_private_key(signer.private))
    return b"DKIM-Signature: " + bytes(value) + message


def test_signature_that_does_not_sign_from_is_permerror_never_pass(
        dns_server: TestDNSServer, resolver: Resolver) -> None:
    """RFC 6376 5.4: From MUST be signed; 6.1.1: such a signature is ignored. It verified as pass."""
    signer = rsa_signer("example.org")
    signer.publish(dns_server)
    [result] = check_dkim(sign_without_from(signer, make_message()), resolver)
    assert (result.result, result.domain) == ("permerror", "example.org")
    assert "From" in result.reason


@pytest.mark.parametrize(("algorithm_of_key", "signer"), [
    ("ed25519", lambda: rsa_signer("example.org")),
    ("rsa", lambda: ed25519_signer("example.org", selector="sel")),
])
def test_key_whose_k_does_not_match_the_algorithm_is_permerror(
        dns_server: TestDNSServer, resolver: Resolver, algorithm_of_key: str, signer: Any) -> None:
    """It was temperror, which could make DMARC temperror too."""
    made = signer()
    other = ed25519_signer("example.org", selector="x") if algorithm_of_key == "ed25519" else rsa_signer("x.example")
    dns_server.add(made.key_name, "TXT", other.public_record)
    [result] = check_dkim(made.sign(make_message()), resolver)
    assert result.result == "permerror", result


@pytest.mark.parametrize("expiry", [1_000_000_000, int(time.time()) - 3600])
def test_expired_signature_is_permerror(dns_server: TestDNSServer, resolver: Resolver, expiry: int) -> None:
    """x= in the past: long ago (dkimpy said neutral) or an hour ago, inside dkimpy's own ten-hour
    leeway (it went on to verify). Either way the signature is expired here, with no leeway."""
    signer = rsa_signer("example.org")
    signer.publish(dns_server)
    expired = signer.sign(make_message()).replace(b"; t=", f"; x={expiry}; t=".encode(), 1)
    [result] = check_dkim(expired, resolver)
    assert result.result == "permerror" and "expired" in result.reason


def test_signature_listing_too_many_fields_is_permerror_unverified(
        dns_server: TestDNSServer, resolver: Resolver) -> None:
    names = b":".join([b"from"] * 600)
    message = b"DKIM-Signature: v=1; a=ed25519-sha256; d=example.org; s=sel; h=" + names + b"; bh=x; b=y\r\n" \
        + make_message()
    [result] = check_dkim(message, resolver)
    assert result.result == "permerror" and "600" not in result.reason and "512" in result.reason
    assert dns_server.query_count() == 0
