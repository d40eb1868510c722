"""The fast integer conversions given to dkimpy must equal its own byte loops."""

from __future__ import annotations

import random

import dkim
import dkim.crypto
import pytest

from sesmail_gateway.checks import dkim as gateway_dkim


def reference_int2str(n: int, length: int = -1) -> bytearray:
    """dkimpy 1.1's crypto.int2str, as written there."""
    r = bytearray()
    while length < 0 or len(r) < length:
        r.append(n & 0xFF)
        n >>= 8
        if length < 0 and n == 0:
            break
    r.reverse()
    return r


def test_conversions_match_dkimpy_and_are_installed() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        n = rng.getrandbits(rng.choice([1, 7, 8, 9, 1024, 2047, 2048]))
        for length in (-1, 256, 300):
            if length > 0 and n.bit_length() > length * 8:
                continue
            assert gateway_dkim._int2str(n, length) == reference_int2str(n, length)
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        assert gateway_dkim._str2int(data) == int.from_bytes(data, "big")
    assert gateway_dkim._int2str(0) == reference_int2str(0) == bytearray(b"\x00")
    assert dkim.crypto.int2str is gateway_dkim._int2str
    assert dkim.crypto.str2int is gateway_dkim._str2int


def test_message_parsing_matches_dkimpy_on_any_mix_of_line_ends() -> None:
    original = gateway_dkim._ORIGINAL_RFC822_PARSE
    rng = random.Random(3)
    parts = [b"Subject: x", b"From: a@b", b"\tcontinued", b" folded", b"X-A: 1", b"", b"body line", b".",
             b"\r", b"x\ry", b"From mbox", b"bad header line"]
    for _ in range(20000):
        message = b"".join(rng.choice(parts) + rng.choice([b"\r\n", b"\n"]) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.3:
            message = message.rstrip(b"\r\n")
        try:
            expected: object = original(message)
        except Exception:  # dkimpy refuses some header blocks; so must we
            expected = "refused"
        try:
            got: object = gateway_dkim._rfc822_parse(message)
        except dkim.MessageFormatError:  # ours says why, where dkimpy may fail with an IndexError
            got = "refused"
        assert got == expected, message
    assert dkim.rfc822_parse is gateway_dkim._rfc822_parse


def test_header_selection_matches_dkimpy() -> None:
    original = gateway_dkim._ORIGINAL_SELECT_HEADERS
    rng = random.Random(5)
    names = [b"from", b"From", b"to", b"subject", b"x-a", b"date"]
    for _ in range(5000):
        headers = [(rng.choice(names), b"v%d" % i) for i in range(rng.randint(0, 10))]
        include = [rng.choice(names).lower() for _ in range(rng.randint(0, 10))]
        assert gateway_dkim._select_headers(headers, include) == original(headers, include)
    assert dkim.select_headers is gateway_dkim._select_headers


@pytest.mark.timeout(30)
def test_parsing_and_selection_are_linear() -> None:
    """dkimpy's own versions took seconds at these sizes (quadratic); a check that runs out of
    time leaves DMARC temperror. The bound is the test's timeout, far above linear time."""
    folded = b"DKIM-Signature: v=1;" + b"\r\n a=b;" * 400_000 + b"\r\nFrom: a@b.example\r\n\r\nbody\r\n"
    headers, _ = gateway_dkim._rfc822_parse(folded)
    assert len(headers) == 2
    many = [(b"x-%d" % i, b"v") for i in range(200_000)]
    assert gateway_dkim._select_headers(many, [b"absent-%d" % i for i in range(200_000)]) == []


def test_relaxed_body_canonicalization_matches_dkimpy() -> None:
    original = gateway_dkim._ORIGINAL_RELAXED_BODY
    rng = random.Random(11)
    parts = [b"word", b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n", b"x", b"\t\t", b"."]
    for _ in range(20000):
        body = b"".join(rng.choice(parts) for _ in range(rng.randint(0, 16)))
        assert gateway_dkim._relaxed_body(body) == original(body), body
    text = (b"plain text with single spaces only, as most mail is\r\n" * 2000) + b"\r\n\r\n"
    assert gateway_dkim._relaxed_body(text) == original(text)
    assert dkim.canonicalization.Relaxed.canonicalize_body is gateway_dkim._relaxed_body
