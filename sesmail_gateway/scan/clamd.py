"""ClamAV's clamd over ``INSTREAM``: the message in length-prefixed chunks, then a zero-length chunk.

Reply (NUL-terminated with the ``z`` command prefix): ``stream: OK``,
``stream: <signature> FOUND`` or ``... ERROR``. clamd closes the stream
with an error past its ``StreamMaxLength``; the caller already caps the
size at ``scan.max_size``.
"""

from __future__ import annotations

import socket
import struct
import time

from sesmail_gateway.config import parse_hostport
from sesmail_gateway.scan import CLEAN, VIRUS, Envelope, ScanError, ScanResult

CHUNK = 64 * 1024


class ClamdScanner:
    name = "clamd"
    kind = "virus"

    def __init__(self, address: str, *, timeout: float) -> None:
        """``address`` is host:port (default port 3310) or the path of clamd's unix socket."""
        self.address: str | tuple[str, int] = address if address.startswith("/") else \
            parse_hostport(address, default_port=3310)
        self.timeout = timeout

    def scan(self, message: bytes, envelope: Envelope) -> ScanResult:
        started = time.monotonic()
        try:
            with self._connect() as sock:
                sock.sendall(b"zINSTREAM\0")
                view = memoryview(message)
                for offset in range(0, len(view), CHUNK):
                    chunk = view[offset:offset + CHUNK]
                    sock.sendall(struct.pack("!I", len(chunk)))
                    sock.sendall(chunk)
                sock.sendall(struct.pack("!I", 0))
                reply = _read_reply(sock)
        except OSError as exc:
            raise ScanError(f"{type(exc).__name__}: {exc}") from None
        virus = parse_reply(reply)
        return ScanResult("clamd", VIRUS if virus else CLEAN, virus=virus, seconds=time.monotonic() - started)

    def _connect(self) -> socket.socket:
        if isinstance(self.address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.address)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection(self.address, timeout=self.timeout)


def parse_reply(reply: bytes) -> str:
    """The signature name for ``FOUND``, "" for ``OK``; ScanError otherwise."""
    text = reply.rstrip(b"\0").decode("utf-8", "replace").strip()
    _, _, verdict = text.partition(": ")
    if verdict == "OK":
        return ""
    if verdict.endswith(" FOUND"):
        return verdict[: -len(" FOUND")] or "unknown"
    raise ScanError(text[:200] or "empty reply")


def _read_reply(sock: socket.socket) -> bytes:
    reply = b""
    while not reply.endswith(b"\0") and len(reply) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply
