"""What the checks give dkimpy in place of its own functions must give dkimpy's results."""

from __future__ import annotations

import hashlib
import random

import dkim
import dkim.crypto
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
    parts = [b"word", b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n", b"x", b"\t\t", b".", b" " * 37, b"\t \t  \t",
             b"\r", b"\n"]
    for _ in range(20000):
        body = b"".join(rng.choice(parts) for _ in range(rng.randint(0, 16)))
        assert gateway_dkim._relaxed_body(body) == original(body), body
    text = (b"plain text with single spaces only, as most mail is\r\n" * 2000) + b"\r\n\r\n"
    assert gateway_dkim._relaxed_body(text) == original(text)
    run = b"x" + b" " * 3000 + b"y \t\r\n"
    assert gateway_dkim._relaxed_body(run) == original(run) == b"x y\r\n"


def test_relaxed_header_canonicalization_matches_dkimpy() -> None:
    original = gateway_dkim._ORIGINAL_RELAXED_HEADERS
    rng = random.Random(12)
    parts = [b"v", b" ", b"  ", b"\t", b"\r\n", b"\r\n ", b"\n", b"\r", b"\r\r\n", b";", b"\xc3\xa9"]
    for _ in range(20000):
        headers = [(rng.choice([b"From", b"SUBJECT ", b"dkim-Signature", b"X-A\t"]),
                    b"".join(rng.choice(parts) for _ in range(rng.randint(0, 12))))
                   for _ in range(rng.randint(0, 3))]
        assert gateway_dkim._relaxed_headers(headers) == original(headers), headers
    assert dkim.canonicalization.Relaxed.canonicalize_headers is gateway_dkim._relaxed_headers


def test_relaxed_body_canonicalization_is_linear_in_a_run_of_spaces() -> None:
    """dkimpy's trailing-whitespace pattern tries every space of a run as the start of a match that fails at
    the run's end: quadratic, hours for a few MiB of spaces. Halving the run takes twenty passes for a million."""
    spaces = b"x" + b" " * 1_000_000 + b"y \t\r\n"
    assert gateway_dkim._relaxed_body(spaces) == b"x y\r\n"
    assert dkim.canonicalization.Relaxed.canonicalize_body is gateway_dkim._relaxed_body


def _dkimpy_key(key: rsa.RSAPrivateKey) -> dict[str, int]:
    numbers = key.public_key().public_numbers()
    return {"modulus": numbers.n, "publicExponent": numbers.e}


@pytest.mark.parametrize("bits", [1024, 2048])
def test_openssl_rsa_verification_matches_dkimpy(bits: int) -> None:
    """Every verdict of the OpenSSL path equals dkimpy's own arithmetic: good signatures,
    each byte flipped in turn, other messages, other keys, short and padded signatures."""
    original = gateway_dkim._ORIGINAL_RSA_VERIFY
    rng = random.Random(bits)
    key, other = (rsa.generate_private_key(public_exponent=65537, key_size=bits) for _ in range(2))
    public = _dkimpy_key(key)
    for name in ("sha256", "sha1"):
        algorithm = hashes.SHA256() if name == "sha256" else hashes.SHA1()
        for n in range(40):
            data = rng.randbytes(rng.randint(0, 200))
            signature = key.sign(data, padding.PKCS1v15(), algorithm)
            candidates = [signature, other.sign(data, padding.PKCS1v15(), algorithm),
                          key.sign(data + b"x", padding.PKCS1v15(), algorithm), b"\x00" + signature,
                          signature[1:] if signature[0] == 0 else signature[:-1], b"", b"\x00" * len(signature)]
            flipped = bytearray(signature)
            flipped[n % len(signature)] ^= 1 << rng.randrange(8)
            candidates.append(bytes(flipped))
            for candidate in candidates:
                ours = gateway_dkim._rsa_verify(hashlib.new(name, data), candidate, public)
                assert ours == original(hashlib.new(name, data), candidate, public), (name, candidate.hex())
            assert gateway_dkim._rsa_verify(hashlib.new(name, data), signature, public) is True
    assert dkim.RSASSA_PKCS1_v1_5_verify is gateway_dkim._rsa_verify


def test_openssl_rsa_verification_refuses_a_signature_not_below_the_modulus() -> None:
    """dkimpy reduces the signature modulo n, so s + n verifies there too; RFC 8017 8.2.2 says invalid."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    public = _dkimpy_key(key)
    signature = key.sign(b"data", padding.PKCS1v15(), hashes.SHA256())
    forged = (int.from_bytes(signature, "big") + public["modulus"]).to_bytes(129, "big")
    assert gateway_dkim._ORIGINAL_RSA_VERIFY(hashlib.sha256(b"data"), forged, public)
    assert not gateway_dkim._rsa_verify(hashlib.sha256(b"data"), forged, public)


def _prime(rng: random.Random, bits: int) -> int:
    while True:
        n = rng.getrandbits(bits) | (1 << (bits - 1)) | 1
        if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
            return n


def test_small_keys_stay_with_dkimpy() -> None:
    """Under 1024 bits OpenSSL is not asked (dkimpy's minkey refuses such keys after a match)."""
    rng = random.Random(768)
    p, q = _prime(rng, 384), _prime(rng, 384)
    d = pow(65537, -1, (p - 1) * (q - 1))
    private = {"modulus": p * q, "publicExponent": 65537, "privateExponent": d, "prime1": p, "prime2": q,
               "exponent1": d % (p - 1), "exponent2": d % (q - 1), "coefficient": pow(q, -1, p)}
    public = {"modulus": p * q, "publicExponent": 65537}
    signature = bytes(dkim.crypto.RSASSA_PKCS1_v1_5_sign(hashlib.sha256(b"data"), private))
    assert gateway_dkim._rsa_verify(hashlib.sha256(b"data"), signature, public) is True
    assert gateway_dkim._rsa_verify(hashlib.sha256(b"other"), signature, public) is False


def test_public_keys_are_parsed_as_dkimpy_parses_them() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert gateway_dkim._parse_public_key(der) == gateway_dkim._ORIGINAL_PARSE_PUBLIC_KEY(der) == _dkimpy_key(key)
    first = gateway_dkim._parse_public_key(der)
    first["modulus"] = 3  # a caller changing its copy changes nobody else's
    assert gateway_dkim._parse_public_key(der) == _dkimpy_key(key)
    with pytest.raises(dkim.crypto.UnparsableKeyError):
        gateway_dkim._parse_public_key(b"\x30\x03garbage")
    assert dkim.parse_public_key is gateway_dkim._parse_public_key
