"""SpamAssassin's spamd over the spamc protocol (``SYMBOLS``: the score and the rules that hit).

Request: ``SYMBOLS SPAMC/1.5``, ``Content-length``, a blank line, the
message. Reply: ``SPAMD/1.1 0 EX_OK``, a ``Spam: True ; 15.2 / 5.0``
header, a blank line, the comma-separated rule names.
"""

from __future__ import annotations

import re
import socket
import time

from sesmail_gateway.config import parse_hostport
from sesmail_gateway.scan import CLEAN, Envelope, ScanError, ScanResult

_STATUS = re.compile(rb"^SPAMD/\d+\.\d+ (\d+) (.*)$")
_SPAM = re.compile(rb"^Spam:\s*(True|False|Yes|No)\s*;\s*(-?[\d.]+)\s*/\s*(-?[\d.]+)", re.IGNORECASE)
_MAX_REPLY = 1 << 20


class SpamdScanner:
    name = "spamd"
    kind = "spam"

    def __init__(self, address: str, *, timeout: float) -> None:
        self.host, self.port = parse_hostport(address, default_port=783)
        self.timeout = timeout

    def scan(self, message: bytes, envelope: Envelope) -> ScanResult:
        started = time.monotonic()
        request = b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n\r\n" % len(message)
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                sock.sendall(request)
                sock.sendall(message)
                sock.shutdown(socket.SHUT_WR)
                reply = _read_all(sock)
        except OSError as exc:
            raise ScanError(f"{type(exc).__name__}: {exc}") from None
        score, symbols = parse_reply(reply)
        return ScanResult("spamd", CLEAN, score=score, symbols=symbols, seconds=time.monotonic() - started)


def parse_reply(reply: bytes) -> tuple[float, tuple[str, ...]]:
    """(score, rule names) from a SYMBOLS reply; ScanError for anything else."""
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = _STATUS.match(lines[0]) if lines else None
    if status is None:
        raise ScanError("not a SPAMD reply")
    if status.group(1) != b"0":
        raise ScanError(f"error {status.group(1).decode()} {status.group(2).decode('ascii', 'replace')}")
    for line in lines[1:]:
        spam = _SPAM.match(line)
        if spam:
            names = tuple(n for n in body.decode("ascii", "replace").strip().split(",") if n)
            return float(spam.group(2)), names
    raise ScanError("reply has no Spam header")


def _read_all(sock: socket.socket) -> bytes:
    chunks, size = [], 0
    while size < _MAX_REPLY:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
