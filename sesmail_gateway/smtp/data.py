"""The DATA reader: chunked, size-limited, and ended only by CRLF.CRLF.

aiosmtpd reads DATA line by line; this reads large chunks and searches for
the terminator, which is several times faster on big messages. Only the
exact sequence CR LF "." CR LF ends the data, so a bare LF or bare CR
variant (``\\n.\\n``, ``\\n.\\r\\n``, ``\\r.\\r\\n``) stays inside the message
and can never start a second one (SMTP smuggling).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

TERMINATOR = b"\r\n.\r\n"
CHUNK = 256 * 1024


@dataclass
class DataResult:
    content: bytes | None  # None when the message was too big
    received_bytes: int
    leftover: bytes  # bytes after the terminator (pipelined commands)


async def read_data(reader: asyncio.StreamReader, limit: int | None) -> DataResult:
    """Read one message up to the terminator, undoing dot-stuffing.

    Over ``limit`` the bytes are discarded but reading goes on to the
    terminator, so the session stays in step and can answer 552.
    Raises ConnectionResetError when the client goes away mid-message.
    """
    # A virtual CRLF in front lets an empty message (".\r\n" at once) match too.
    buf = bytearray(b"\r\n")
    scan_from = 0
    received = 0
    too_big = False
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            raise ConnectionResetError("connection closed during DATA")
        received += len(chunk)
        buf += chunk
        end = buf.find(TERMINATOR, scan_from)
        if end >= 0:
            leftover = bytes(buf[end + len(TERMINATOR):])
            if too_big:
                return DataResult(None, received - len(leftover), leftover)
            # Every CRLF "." loses its dot (RFC 5321 4.5.2); then drop the virtual CRLF.
            content = bytes(buf[: end + 2]).replace(b"\r\n.", b"\r\n")[2:]
            if limit is not None and len(content) > limit:
                return DataResult(None, received - len(leftover), leftover)
            return DataResult(content, received - len(leftover), leftover)
        if limit is not None and not too_big and len(buf) - 2 > limit + limit // 50 + 1024:
            # Allow for dot-stuffing overhead before calling it too big.
            too_big = True
        if too_big:
            del buf[: len(buf) - (len(TERMINATOR) - 1)]
        scan_from = max(0, len(buf) - (len(TERMINATOR) - 1))
