"""The one set of test helpers: a raw SMTP client, a clock, the DNS test server, the gateway fixture.

Tests import from here (``from tests.helpers import RawSMTP``); ``tests/conftest.py``
re-exports the gateway names so older imports (``from conftest import Gateway``)
keep working.
"""

from __future__ import annotations

import socket

from tests.dnsserver import TestDNSServer

__all__ = ["Clock", "RawSMTP", "TestDNSServer"]


class RawSMTP:
    """A line-level SMTP client: exact bytes out, reply lines in (smtplib rewrites
    line endings and dots, and cannot send bytes that are not UTF-8)."""

    def __init__(self, port: int, *, source: str = "127.0.0.1", timeout: float = 10) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.file = self.sock.makefile("rb")

    def line(self) -> str:
        """One reply line without CRLF; "" when the server has closed the connection."""
        return self.file.readline().decode().rstrip("\r\n")

    def reply(self) -> str:
        """One whole reply, multi-line replies joined with newlines."""
        lines = []
        while True:
            line = self.line()
            if not line:
                raise ConnectionError(f"connection closed after {lines!r}")
            lines.append(line)
            if line[3:4] != "-":
                return "\n".join(lines)

    def coded_reply(self) -> tuple[int, str]:
        """One whole reply as (code, text of every line joined with newlines)."""
        text = self.reply()
        return int(text[:3]), "\n".join(line[4:] for line in text.split("\n"))

    def command(self, line: bytes) -> str:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def rest(self) -> list[str]:
        """Every line until the server closes the connection."""
        lines = []
        while line := self.line():
            lines.append(line)
        return lines

    def closed(self) -> bool:
        try:
            return self.file.readline() == b""
        except ConnectionResetError:
            return True

    def start_transaction(self, recipient: bytes = b"alice@example.test") -> None:
        assert self.reply().startswith("220 mx.test ")
        assert self.command(b"EHLO client.test").startswith("250-mx.test")
        assert self.command(b"MAIL FROM:<sender@elsewhere.test>") == "250 2.1.0 Sender ok"
        assert self.command(b"RCPT TO:<" + recipient + b">") == "250 2.1.5 Recipient ok"

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Clock:
    """A settable clock for code that takes ``clock=`` (seconds, like ``time.time``)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
