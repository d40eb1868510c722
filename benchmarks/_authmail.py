"""Authenticated benchmark mail: a DKIM key, the sender domain's DNS records, and signed messages.

At benchmark start :meth:`AuthSetup.generate` makes a fresh RSA-2048 key
(``cryptography``) for ``sel._domainkey.bench-sender.test``.  The sender
domain publishes

* SPF   ``bench-sender.test``         ``v=spf1 ip4:127.0.0.1 -all``
* DKIM  ``sel._domainkey.<domain>``   ``v=DKIM1; k=rsa; p=<SubjectPublicKeyInfo>``
* DMARC ``_dmarc.<domain>``           ``v=DMARC1; p=reject``

and :meth:`AuthSetup.template` builds one message per size, DKIM-signed once
(dkimpy, relaxed/relaxed, rsa-sha256).  ``Message-ID`` is deliberately *not*
among the signed headers, so the load client can give every transaction a
unique Message-ID without re-signing.  :func:`verify_against_stub` proves,
through the real DNS stub, that a rendered message verifies -- so the
benchmark measures passing checks, not cheap failures.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass

import dkim
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from _smtpload import MessageTemplate, undot
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SENDER_DOMAIN = "bench-sender.test"
SENDER = f"bench@{SENDER_DOMAIN}"
SELECTOR = "sel"
KEY_BITS = 2048
SPF_RECORD = "v=spf1 ip4:127.0.0.1 -all"
DMARC_RECORD = "v=DMARC1; p=reject"
SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"mime-version", b"content-type")
"""Every header of the benchmark message except Message-ID (which varies per transaction)."""


class AuthSetupError(Exception):
    """The signed message does not verify, or the DNS stub does not serve the records."""


@dataclass(frozen=True)
class AuthSetup:
    """A sender domain with a DKIM key and the SPF/DKIM/DMARC records that make its mail pass."""

    domain: str
    selector: str
    private_pem: bytes
    public_b64: str

    @classmethod
    def generate(cls, domain: str = SENDER_DOMAIN, selector: str = SELECTOR) -> AuthSetup:
        """Generate a fresh RSA key pair for ``selector._domainkey.domain``."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                        serialization.NoEncryption())
        public_der = key.public_key().public_bytes(serialization.Encoding.DER,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(domain, selector, private_pem, base64.b64encode(public_der).decode("ascii"))

    @property
    def sender(self) -> str:
        """Envelope and From address of the signed mail."""
        return f"bench@{self.domain}"

    @property
    def dkim_name(self) -> str:
        """Owner name of the DKIM key record."""
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def dkim_record(self) -> str:
        """The DKIM key record (longer than 255 bytes: the stub splits it into character-strings)."""
        return f"v=DKIM1; k=rsa; p={self.public_b64}"

    def records(self) -> dict[str, list[str]]:
        """TXT records to publish: SPF, DKIM key and DMARC policy."""
        return {
            self.domain: [SPF_RECORD],
            self.dkim_name: [self.dkim_record],
            f"_dmarc.{self.domain}": [DMARC_RECORD],
        }

    def sign(self, message: bytes) -> bytes:
        """Return the ``DKIM-Signature`` header for ``message`` (every header but Message-ID signed)."""
        return bytes(dkim.sign(
            message, self.selector.encode(), self.domain.encode(), self.private_pem,
            canonicalize=(b"relaxed", b"relaxed"), include_headers=list(SIGNED_HEADERS),
        ))

    def template(self, size: int) -> MessageTemplate:
        """A message of about ``size`` bytes from :attr:`sender`, signed once up front."""
        return MessageTemplate.build(size, sender=self.sender, signer=self.sign)


def stub_txt_lookup(server: tuple[str, int], timeout: float = 2.0) -> Callable[..., bytes]:
    """A dkimpy ``dnsfunc`` that asks the DNS stub at ``server`` over UDP (b"" when there is no record)."""
    host, port = server

    def lookup(name: bytes | str, timeout: float = timeout) -> bytes:
        text = name.decode("ascii") if isinstance(name, bytes) else name
        response = dns.query.udp(dns.message.make_query(text, "TXT"), host, port=port, timeout=timeout)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(rrset[0].strings)
        return b""

    return lookup


def verify_against_stub(setup: AuthSetup, template: MessageTemplate, server: tuple[str, int]) -> None:
    """Check through the DNS stub that the records are served and a rendered message DKIM-verifies.

    Blocking (dnspython + dkimpy): call it from a thread while the stub runs on the event loop.
    Raises :class:`AuthSetupError` describing the first problem.
    """
    lookup = stub_txt_lookup(server)
    for name, values in setup.records().items():
        got = lookup(name)
        if got != values[0].encode():
            raise AuthSetupError(f"DNS stub serves {got[:60]!r} for {name}, expected {values[0][:60]!r}")
    query = dns.message.make_query(f"nothing.{setup.domain}", "TXT")
    missing = dns.query.udp(query, server[0], port=server[1], timeout=2.0)
    if missing.rcode() != dns.rcode.NXDOMAIN:
        raise AuthSetupError(f"DNS stub answers {dns.rcode.to_text(missing.rcode())} for an unknown name")
    rendered = undot(template.render(0))
    if not dkim.verify(rendered, dnsfunc=lookup):
        raise AuthSetupError(f"a rendered {template.size}-byte message does not DKIM-verify against the stub")
