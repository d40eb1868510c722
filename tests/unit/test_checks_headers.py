"""Reading the raw header block: fields by byte range, the RFC5322.From domain,
organisational domains and alignment."""

from __future__ import annotations

import pytest

from sesmail_gateway.checks.dmarc import from_domain, is_aligned, organizational_domain
from sesmail_gateway.checks.headers import header_fields, unfold


def test_fields_cover_the_header_block_byte_for_byte() -> None:
    message = b"A: 1\r\nB: two\r\n  lines\r\nno colon line\r\nC : 3\n\r\nbody: not a header\r\n"
    fields = header_fields(message)
    assert [f.name for f in fields] == [b"A", b"B", b"", b"C"]
    assert b"".join(f.raw for f in fields) + b"\r\nbody: not a header\r\n" == message
    assert fields[1].value == b" two\r\n  lines"
    assert unfold(fields[1].value) == "two  lines"
    assert fields[3].is_named("c")
    assert [f.key for f in fields] == ["a", "b", "", "c"]


def test_field_names_match_in_any_case() -> None:
    fields = header_fields(b"FROM: a@example.org\r\nDkim-Signature: v=1\r\nSubject: x\r\n\r\n")
    assert [f.key for f in fields] == ["from", "dkim-signature", "subject"]
    assert fields[0].is_named("from") and fields[1].is_named("dkim-signature")
    assert not fields[2].is_named("from")
    assert from_domain(b"", fields) == ("example.org", "")


@pytest.mark.parametrize(("header", "expected"), [
    (b"From: alice@example.org", ("example.org", "")),
    (b'From: "Doe, Alice" <Alice@Mail.Example.ORG.>', ("mail.example.org", "")),
    (b"From: =?utf-8?q?Al=C3=AFce?= <alice@example.org>", ("example.org", "")),
    (b"From: Alice\r\n <alice@example.org>", ("example.org", "")),
    (b"From: a@example.org, b@example.org", ("example.org", "")),
    ("From: Ann <ann@bücher.example>".encode(), ("xn--bcher-kva.example", "")),
    (b"From: a@example.org, b@other.example", ("", "multiple-from-domains")),
    (b"From: alice", ("", "no-from-domain")),
    (b"From: undisclosed-recipients:;", ("", "no-from-domain")),
    (b"From: alice@[192.0.2.1]", ("", "no-from-domain")),
    (b"From: a@example.org\r\nFrom: b@example.org", ("", "multiple-from")),
    (b"Sender: a@example.org", ("", "no-from")),
    (b"From: (a (nested) comment) alice@example.org (x\\) y)", ("example.org", "")),
    (b"From: Group: a@example.org, (c) b@example.org;", ("example.org", "")),
    (b"From: <@route.example,@r2.example:alice@example.org>", ("example.org", "")),
    (b'From: "quoted <b@evil.example>" <alice@example.org>', ("example.org", "")),
    (b'From: "a@b"@example.org', ("example.org", "")),
    (b"From: (" * 3000 + b"x" + b")" * 3000 + b" <alice@example.org>", ("example.org", "")),
    (b"From: (unclosed comment alice@example.org", ("", "unparseable-from")),
    (b'From: "unclosed <alice@example.org>', ("", "unparseable-from")),
    (b"From: Alice <alice@example.org", ("", "unparseable-from")),
])
def test_from_domain(header: bytes, expected: tuple[str, str]) -> None:
    message = b"Subject: x\r\n" + header + b"\r\n\r\nFrom: body@ignored.example\r\n"
    assert from_domain(message) == expected


@pytest.mark.parametrize(("domain", "org"), [
    ("example.org", "example.org"),
    ("a.b.example.org", "example.org"),
    ("mail.example.co.uk", "example.co.uk"),
    ("Example.COM.", "example.com"),
    ("x.example.test", "example.test"),
])
def test_organizational_domain_uses_the_public_suffix_list(domain: str, org: str) -> None:
    assert organizational_domain(domain) == org


@pytest.mark.parametrize(("identifier", "author", "mode", "aligned"), [
    ("example.org", "example.org", "s", True),
    ("mail.example.org", "example.org", "s", False),
    ("mail.example.org", "example.org", "r", True),
    ("example.org", "news.example.org", "r", True),
    ("a.example.co.uk", "b.example.co.uk", "r", True),
    ("evil.co.uk", "example.co.uk", "r", False),
    ("", "example.org", "r", False),
])
def test_alignment(identifier: str, author: str, mode: str, aligned: bool) -> None:
    assert is_aligned(identifier, author, mode) is aligned
