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
    received_bytes: int  # bytes on the wire, up to and including the terminator
    leftover: bytes  # bytes after the terminator (pipelined commands)
    message_bytes: int = 0  # the message's size (RFC 1870): no stuffed dots, no terminator


async def read_data(reader: asyncio.StreamReader, limit: int | None) -> DataResult:
    """Read one message up to the terminator, undoing dot-stuffing.

    The limit applies to the message as RFC 1870 counts it: the doubled
    leading dots of dot-stuffing and the terminating dot line are not part
    of it, so a message within ``SIZE=`` is never refused for having many
    lines that begin with a dot. Over ``limit`` the bytes are discarded but
    reading goes on to the terminator, so the session stays in step and can
    answer 552. Raises ConnectionResetError when the client goes away
    mid-message.
    """
    # A virtual CRLF in front lets an empty message (".\r\n" at once) match too.
    buf = bytearray(b"\r\n")
    scan_from = 0  # every CRLF "." starting before this index of buf has been classified
    received = 0
    stuffed = 0  # CRLF "." sequences seen so far that are not the terminator: each one's dot is not message
    dots: list[int] = []  # where those dots are in buf (only while the message is kept)
    too_big = False
    while True:
        chunk = await reader.read(CHUNK)
        if not chunk:
            raise ConnectionResetError("connection closed during DATA")
        received += len(chunk)
        buf += chunk
        # One pass finds both the stuffed dots and the terminator: each is a CRLF ".", and only
        # CRLF "." CRLF ends the data. A CRLF "." too near the end to tell waits for the next chunk.
        end = -1
        while (hit := buf.find(b"\r\n.", scan_from)) >= 0:
            if len(buf) < hit + len(TERMINATOR):
                scan_from = hit
                break
            if buf[hit + 3:hit + 5] == b"\r\n":
                end = hit
                break
            stuffed += 1
            if not too_big:
                dots.append(hit + 2)
            scan_from = hit + 3
        else:
            scan_from = max(scan_from, len(buf) - 2)  # a CRLF "." may straddle two chunks
        if end >= 0:
            leftover = bytes(buf[end + len(TERMINATOR):])
            wire = received - len(leftover)
            if too_big:  # the size is approximate here: it only goes to the log
                return DataResult(None, wire, leftover, wire - stuffed - 2)
            # Every CRLF "." loses its dot (RFC 5321 4.5.2); the virtual CRLF goes too.
            content = _without(memoryview(buf), 2, end + 2, dots)
            if limit is not None and len(content) > limit:
                return DataResult(None, wire, leftover, len(content))
            return DataResult(content, wire, leftover, len(content))
        # received - stuffed is the message so far plus at most two bytes of the terminator.
        if limit is not None and not too_big and received - stuffed > limit + len(TERMINATOR):
            too_big = True
            dots.clear()
        if too_big:
            drop = len(buf) - (len(TERMINATOR) - 1)
            if drop > 0:
                del buf[:drop]
                scan_from = max(0, scan_from - drop)


def _without(data: memoryview, start: int, stop: int, skip: list[int]) -> bytes:
    """``data[start:stop]`` as bytes, leaving out the byte at each index in ``skip`` (ascending)."""
    if not skip:
        return bytes(data[start:stop])
    parts = []
    for index in skip:
        parts.append(data[start:index])
        start = index + 1
    parts.append(data[start:stop])
    return b"".join(parts)
