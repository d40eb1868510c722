"""A small, efficient SMTP load client for the accept benchmark.

The client speaks plain SMTP over ``asyncio`` streams: one task per connection,
``EHLO`` once, then ``MAIL``/``RCPT``/``DATA`` repeated on the same session
(no ``RSET`` on the happy path, no pipelining).  It is deliberately lean
because it shares the CPU with the server under test.

Public pieces:

* :class:`MessageTemplate` -- a message pre-built once per size; ``render(seq)``
  splices a unique ``Message-ID`` into the pre-built bytes.  ``build`` takes
  an envelope/From sender and an optional ``signer`` that returns header
  bytes to prepend (the "checks on" mode DKIM-signs each size once this way;
  Message-ID must then stay out of the signed headers).
* :func:`run_load` -- drive one address with N connections for M transactions
  and return a :class:`Result` (accepted count, errors, latencies).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

Address = tuple[str, int]

MAIL_FROM = "bench@sender.test"
RCPT_TO = "user@bench.test"
EHLO_NAME = "client.bench.test"
STEP_TIMEOUT = 60.0
"""Seconds allowed for connecting+EHLO, or for one whole transaction, before it counts as an error."""

_LOREM = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore "
    "et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip "
    "ex ea commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla "
    "pariatur excepteur sint occaecat cupidatat non proident sunt culpa qui officia deserunt mollit anim"
)
_WORDS = _LOREM.split()
_MAX_LINE = 78
_BUILD_DATE = email.utils.formatdate(localtime=False)
_UNIQUE = itertools.count(int(time.time()))
"""Process-wide counter that keeps Message-IDs unique across warm-up and measured runs."""


class SmtpProtocolError(Exception):
    """The server broke the conversation (closed, timed out, or sent garbage)."""


class MessageSource(Protocol):
    """Anything :func:`run_load` can send: a nominal size and per-transaction bytes."""

    @property
    def size(self) -> int:
        """Nominal message size in bytes (headers included, before dot-stuffing)."""
        ...

    @property
    def mail_from(self) -> str:
        """The envelope sender for ``MAIL FROM``."""
        ...

    def render(self, seq: int) -> bytes:
        """Return the complete, dot-stuffed DATA payload ending with ``CRLF.CRLF``."""
        ...


# --------------------------------------------------------------------------- messages


def _body_lines(rng: random.Random, target: int) -> list[bytes]:
    """Return printable body lines (each <= 78 chars) totalling at least ``target`` bytes with CRLFs."""
    lines: list[bytes] = []
    total = 0
    while total < target:
        words: list[str] = []
        length = 0
        while True:
            word = rng.choice(_WORDS)
            if length + len(word) + 1 > _MAX_LINE - 2:  # leave room for a stuffed dot
                break
            words.append(word)
            length += len(word) + 1
        line = " ".join(words)
        if rng.random() < 0.02:
            line = "." + line  # exercise dot-stuffing
        lines.append(line.encode("ascii"))
        total += len(line) + 2
    return lines


def dot_stuff(lines: list[bytes]) -> list[bytes]:
    """Apply RFC 5321 section 4.5.2 transparency: prefix lines starting with ``.`` with another dot."""
    return [b"." + line if line.startswith(b".") else line for line in lines]


Signer = Callable[[bytes], bytes]
"""Takes a complete message (CRLF line ends, not dot-stuffed) and returns header bytes to prepend."""


@dataclass(frozen=True)
class MessageTemplate:
    """A message of roughly ``size`` bytes, built once; only the Message-ID varies per send."""

    size: int
    head: bytes
    tail: bytes
    tag: bytes = b"bench"
    mail_from: str = MAIL_FROM

    @classmethod
    def build(cls, size: int, seed: int = 1, sender: str = MAIL_FROM, signer: Signer | None = None,
              ) -> MessageTemplate:
        """Build a realistic plain-text message of about ``size`` bytes (headers included).

        With ``signer``, the headers it returns (e.g. ``DKIM-Signature``) are
        prepended; the message is sized so that the signed total is ``size``.
        """
        template = cls._assemble(size, seed, sender, signer, extra=0)
        if signer is None:
            return template
        extra = len(template.head) - len(cls._headers_before(size, sender))
        return cls._assemble(size, seed, sender, signer, extra=extra)

    @staticmethod
    def _headers_before(size: int, sender: str) -> bytes:
        """Every header up to the ``Message-ID:`` value, in a fixed order (the Date is fixed per build)."""
        return (
            f"From: Bench Sender <{sender}>\r\n"
            f"To: <{RCPT_TO}>\r\n"
            f"Subject: sesmail-gateway accept benchmark ({size} bytes)\r\n"
            f"Date: {_BUILD_DATE}\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "Message-ID: "
        ).encode("ascii")

    @classmethod
    def _assemble(cls, size: int, seed: int, sender: str, signer: Signer | None, extra: int) -> MessageTemplate:
        """Lay out head/tail for ``size`` bytes, ``extra`` of which go to prepended (signature) headers."""
        headers_before = cls._headers_before(size, sender)
        headers_after = b"\r\n\r\n"  # end of Message-ID line, blank separator line
        overhead = extra + len(headers_before) + len(headers_after) + 40  # ~40 bytes for the Message-ID value
        lines = _body_lines(random.Random(seed), max(size - overhead, 1))
        if signer is not None:
            unsigned = headers_before + b"<unsigned@client.bench.test>" + headers_after + b"\r\n".join(lines) + b"\r\n"
            headers_before = signer(unsigned) + headers_before
        body = b"\r\n".join(dot_stuff(lines)) + b"\r\n.\r\n"
        return cls(size=size, head=headers_before, tail=headers_after + body, tag=f"s{size}".encode(),
                   mail_from=sender)

    def render(self, seq: int) -> bytes:
        """Return the DATA payload with a unique ``Message-ID`` for transaction ``seq``."""
        msgid = b"<%d.%d.%s@client.bench.test>" % (next(_UNIQUE), seq, self.tag)
        return b"".join((self.head, msgid, self.tail))


def undot(payload: bytes) -> bytes:
    """Turn a DATA payload (dot-stuffed, ending ``CRLF.CRLF``) back into the message a server receives."""
    if not payload.endswith(b"\r\n.\r\n"):
        raise ValueError("payload does not end with CRLF.CRLF")
    lines = payload[:-3].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    """Outcome of one :func:`run_load` call."""

    attempted: int = 0
    accepted: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """Seconds from sending MAIL FROM to the final 250 after the DATA terminator, accepted only."""
    errors: Counter[str] = field(default_factory=Counter)
    """Error kind -> count, e.g. ``"DATA 451"``, ``"RCPT 550"``, ``"connection: timeout"``."""

    @property
    def error_count(self) -> int:
        """Total number of failed transactions and connection problems."""
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        """Accepted messages per second of wall time."""
        return self.accepted / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, pct: float) -> float:
        """Nearest-rank percentile of the accept latency, in milliseconds (NaN when nothing was accepted)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = max(1, min(len(ordered), math.ceil(pct / 100.0 * len(ordered))))
        return ordered[rank - 1] * 1000.0


# --------------------------------------------------------------------------- SMTP session


class _Session:
    """One client connection; a thin layer over ``asyncio`` streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mail_from: str) -> None:
        self.reader = reader
        self.writer = writer
        self.mail_command = b"MAIL FROM:<" + mail_from.encode() + b">"

    @classmethod
    async def open(cls, address: Address, mail_from: str = MAIL_FROM) -> _Session:
        """Connect, read the banner and say EHLO; raise :class:`SmtpProtocolError` on refusal."""
        async with asyncio.timeout(STEP_TIMEOUT):
            reader, writer = await asyncio.open_connection(*address)
            session = cls(reader, writer, mail_from)
            try:
                code = await session.reply()
                if code != 220:
                    raise SmtpProtocolError(f"banner {code}")
                code = await session.command(b"EHLO " + EHLO_NAME.encode())
                if code != 250:
                    raise SmtpProtocolError(f"EHLO {code}")
            except BaseException:
                session.close()
                raise
        return session

    async def reply(self) -> int:
        """Read one (possibly multi-line) reply and return its code."""
        while True:
            line = await self.reader.readline()
            if len(line) < 4 or not line[:3].isdigit():
                raise SmtpProtocolError("connection closed" if not line else f"bad reply {line[:40]!r}")
            if line[3:4] != b"-":
                return int(line[:3])

    async def command(self, line: bytes) -> int:
        """Send one command line and return the reply code."""
        self.writer.write(line + b"\r\n")
        return await self.reply()

    async def transaction(self, payload: bytes, rcpt: bytes = RCPT_TO.encode()) -> tuple[str, int]:
        """Run MAIL/RCPT/DATA; return ``(stage, code)`` -- ``("DATA", 250)`` on success.

        The caller bounds the time (one ``asyncio.timeout`` per transaction is
        much cheaper than a ``wait_for`` task per reply).
        """
        code = await self.command(self.mail_command)
        if code != 250:
            return "MAIL", code
        code = await self.command(b"RCPT TO:<" + rcpt + b">")
        if code not in (250, 251):
            return "RCPT", code
        code = await self.command(b"DATA")
        if code != 354:
            return "DATA-start", code
        self.writer.write(payload)
        await self.writer.drain()
        return "DATA", await self.reply()

    async def recover(self) -> bool:
        """After a refused transaction, RSET so the session can continue; False if it cannot."""
        try:
            async with asyncio.timeout(STEP_TIMEOUT):
                return await self.command(b"RSET") == 250
        except (OSError, TimeoutError, SmtpProtocolError):
            return False

    async def quit(self) -> None:
        """Say QUIT politely and close; errors are irrelevant at this point."""
        with contextlib.suppress(OSError, TimeoutError, SmtpProtocolError):
            async with asyncio.timeout(5.0):
                await self.command(b"QUIT")
        self.close()

    def close(self) -> None:
        """Close the transport without waiting."""
        self.writer.close()


# --------------------------------------------------------------------------- load driver


class _Tickets:
    """A shared, bounded countdown of transactions (single event loop, so no lock needed)."""

    def __init__(self, count: int) -> None:
        self.next = 0
        self.count = count

    def take(self) -> int | None:
        """Return the next sequence number, or None when the budget is spent."""
        if self.next >= self.count:
            return None
        self.next += 1
        return self.next


def _connection_error(exc: BaseException) -> str:
    """Name a connection-level failure for the error table."""
    if isinstance(exc, TimeoutError):
        return "connection: timeout"
    if isinstance(exc, SmtpProtocolError):
        return f"connection: {exc}"
    return f"connection: {type(exc).__name__}"


async def _worker(
    address: Address, message: MessageSource, tickets: _Tickets, result: Result,
    clock: Callable[[], float],
) -> None:
    """Run transactions on one connection until the ticket budget is spent; reconnect on failure."""
    session: _Session | None = None
    try:
        while (seq := tickets.take()) is not None:
            result.attempted += 1
            try:
                if session is None:
                    session = await _Session.open(address, message.mail_from)
                payload = message.render(seq)
                # A source may spread its messages over recipients (recipient(seq)); most use RCPT_TO.
                pick = getattr(message, "recipient", None)
                rcpt = pick(seq).encode() if pick is not None else RCPT_TO.encode()
                started = clock()
                async with asyncio.timeout(STEP_TIMEOUT):
                    stage, code = await session.transaction(payload, rcpt)
            except (OSError, TimeoutError, SmtpProtocolError) as exc:
                result.errors[_connection_error(exc)] += 1
                if session is not None:
                    session.close()
                session = None
                await asyncio.sleep(0.05)  # do not spin on a dead server
                continue
            if stage == "DATA" and code == 250:
                result.latencies.append(clock() - started)
                result.accepted += 1
                continue
            result.errors[f"{stage} {code}"] += 1
            if code == 421 or not await session.recover():
                session.close()
                session = None
    finally:
        if session is not None:
            await session.quit()


async def run_load(address: Address, message: MessageSource, connections: int, count: int) -> Result:
    """Send ``count`` messages to ``address`` over ``connections`` concurrent sessions.

    Every transaction gets exactly one outcome: accepted (final 250, latency
    recorded) or an error counted by stage and reply code.  The caller bounds
    the total time (e.g. with ``asyncio.timeout``).
    """
    check_loopback(address[0])
    result = Result()
    tickets = _Tickets(count)
    clock = time.perf_counter
    started = clock()
    workers = [
        asyncio.create_task(_worker(address, message, tickets, result, clock))
        for _ in range(max(1, min(connections, count)))
    ]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    result.seconds = clock() - started
    return result


def check_loopback(host: str) -> None:
    """Refuse anything but a loopback IP literal: this benchmark never leaves the host."""
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"refusing non-loopback address {host!r} (use 127.0.0.1)")
