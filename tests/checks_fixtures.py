"""Fixtures and helpers for the authentication-check tests: a real DNS server
on 127.0.0.1, a resolver pointed at it, and DKIM keys generated at test time
(RSA with ``cryptography``, ed25519 with PyNaCl) whose public halves are
published in the test zone.

Test modules import the fixtures they use (the functions carry a ``_fixture``
suffix so the parameter names do not shadow the imports)::

"""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import dkim
import nacl.encoding
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.dnsserver import TestDNSServer

SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id")


@functools.lru_cache(maxsize=8)
def _rsa_key(bits: int, slot: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@dataclass(frozen=True)
class Signer:
    """A DKIM key pair for ``selector._domainkey.domain``."""

    domain: str
    selector: str
    private: bytes
    public_record: str
    algorithm: bytes

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def publish(self, server: TestDNSServer, ttl: int = 300) -> None:
        server.add(self.key_name, "TXT", self.public_record, ttl=ttl)

    def signature(self, message: bytes, *, length: bool = False,
                  headers: Sequence[bytes] = SIGNED_HEADERS) -> bytes:
        return bytes(dkim.sign(message, self.selector.encode(), self.domain.encode(), self.private,
                               signature_algorithm=self.algorithm, include_headers=list(headers),
                               length=length))

    def sign(self, message: bytes, **kwargs: object) -> bytes:
        """The message with this signer's DKIM-Signature prepended."""
        return self.signature(message, **kwargs) + message  # type: ignore[arg-type]

    def arc_seal(self, message: bytes, srv_id: str) -> bytes:
        """The message with the next ARC set prepended (needs an A-R by ``srv_id``)."""
        fields = dkim.arc_sign(message, self.selector.encode(), self.domain.encode(), self.private,
                               srv_id.encode(), include_headers=list(SIGNED_HEADERS))
        assert fields, "dkimpy made no ARC set (no Authentication-Results by srv_id?)"
        return b"".join(fields) + message


def rsa_signer(domain: str, selector: str = "sel", *, bits: int = 2048, slot: int = 0) -> Signer:
    key = _rsa_key(bits, slot)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    record = f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"
    return Signer(domain, selector, private, record, b"rsa-sha256")


def ed25519_signer(domain: str, selector: str = "ed") -> Signer:
    key = nacl.signing.SigningKey.generate()
    private = key.encode(encoder=nacl.encoding.Base64Encoder)
    public = key.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode()
    return Signer(domain, selector, private, f"v=DKIM1; k=ed25519; p={public}", b"ed25519-sha256")


def make_message(*, from_: str = "Alice <alice@example.org>", to: str = "bob@example.com",
                 subject: str = "Hello", body: bytes = b"Hello Bob.\r\n", extra: bytes = b"") -> bytes:
    return (f"From: {from_}\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Date: Mon, 01 Jan 2024 12:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n").encode() \
        + extra + b"\r\n" + body
