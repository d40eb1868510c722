"""The DATA reader on a real asyncio.StreamReader: terminator, dot-unstuffing, limits, smuggling."""

from __future__ import annotations

import asyncio

import pytest

from sesmail_gateway.smtp.data import TERMINATOR, DataResult, read_data

# Chunk sizes that split the terminator at every possible offset, plus whole-buffer feeding.
CHUNK_SIZES = [1, 2, 3, 4, 5, 7, 64, 1 << 20]


async def read(
    wire: bytes, *, limit: int | None = None, chunk: int = 1 << 20, eof: bool = True
) -> tuple[DataResult, bytes]:
    """Feed ``wire`` in ``chunk``-sized pieces (then EOF) while read_data consumes it.

    Returns the result and whatever read_data left unread in the StreamReader.
    """
    reader = asyncio.StreamReader()

    async def feed() -> None:
        for start in range(0, len(wire), chunk):
            reader.feed_data(wire[start:start + chunk])
            await asyncio.sleep(0)
        if eof:
            reader.feed_eof()

    feeder = asyncio.create_task(feed())
    try:
        result = await asyncio.wait_for(read_data(reader, limit), timeout=5)
    finally:
        await feeder
    return result, await reader.read()


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_terminator_ends_data_and_dots_are_unstuffed(chunk: int) -> None:
    wire = b"Subject: x\r\n\r\n..leading dot\r\n..\r\n...two\r\nmid.dle\r\n.\r\n"
    result, rest = await read(wire, chunk=chunk)
    assert result.content == b"Subject: x\r\n\r\n.leading dot\r\n.\r\n..two\r\nmid.dle\r\n"
    assert result.leftover == b""
    assert rest == b""
    assert result.received_bytes == len(wire)


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_bytes_after_the_terminator_are_returned_as_leftover(chunk: int) -> None:
    pipelined = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@example.test>\r\nQUIT\r\n"
    body = b"Subject: y\r\n\r\nhello\r\n"
    wire = body + b".\r\n" + pipelined
    result, rest = await read(wire, chunk=chunk)
    assert result.content == body
    assert result.received_bytes == len(body) + 3
    # What the reader had pulled past the terminator comes back as leftover, the rest is
    # still in the StreamReader: together exactly the pipelined commands, in order.
    assert result.leftover + rest == pipelined
    if chunk >= len(wire):
        assert result.leftover == pipelined


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_empty_message_is_a_bare_dot_line(chunk: int) -> None:
    result, _ = await read(b".\r\n", chunk=chunk)
    assert result.content == b""
    assert result.leftover == b""
    assert result.received_bytes == 3


async def test_message_that_is_only_a_stuffed_dot_line() -> None:
    result, _ = await read(b"..\r\n.\r\n")
    assert result.content == b".\r\n"


async def test_eight_bit_and_invalid_utf8_bytes_pass_through_unchanged() -> None:
    body = b"Subject: \xe9t\xe9\r\n\r\n\xff\xfe\x80 invalid \xc3\x28 utf-8\r\nnul\x00byte\r\n"
    result, _ = await read(body + b".\r\n", chunk=3)
    assert result.content == body


SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\r\n.\r\r\n"]


@pytest.mark.parametrize("chunk", [1, 4, 1 << 20])
@pytest.mark.parametrize("fake_end", SMUGGLING, ids=[repr(v) for v in SMUGGLING])
async def test_bare_cr_or_lf_dot_variants_do_not_end_data(fake_end: bytes, chunk: int) -> None:
    smuggled = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nSubject: smuggled\r\n"
    body = b"Subject: first\r\n\r\nhello" + fake_end + smuggled
    result, _ = await read(body + TERMINATOR, chunk=chunk)
    assert result.content is not None
    # Everything up to the one real CRLF.CRLF is content; only a "\r\n." pair loses its dot.
    assert result.content == (body + b"\r\n").replace(b"\r\n.", b"\r\n")
    assert smuggled in result.content
    assert result.leftover == b""


@pytest.mark.parametrize("chunk", [1, 5, 1000, 1 << 20])
async def test_over_the_limit_gives_none_but_reads_to_the_terminator(chunk: int) -> None:
    limit = 1000
    body = (b"x" * 78 + b"\r\n") * 200  # 16 000 bytes
    wire = body + b".\r\nQUIT\r\n"
    result, rest = await read(wire, limit=limit, chunk=chunk)
    assert result.content is None
    assert result.received_bytes == len(body) + 3
    assert result.leftover + rest == b"QUIT\r\n"


async def test_just_over_the_limit_is_refused_and_at_the_limit_accepted() -> None:
    limit = 100
    at_limit = b"a" * 98 + b"\r\n"
    assert len(at_limit) == limit
    assert (await read(at_limit + b".\r\n", limit=limit))[0].content == at_limit
    over = b"a" * 99 + b"\r\n"
    assert (await read(over + b".\r\n", limit=limit))[0].content is None


async def test_dot_stuffing_does_not_count_against_the_limit() -> None:
    # 30 stuffed lines: 120 bytes on the wire, 90 bytes of content.
    body = b"..\r\n" * 30
    result, _ = await read(body + b".\r\n", limit=100)
    assert result.content == b".\r\n" * 30


async def test_no_limit_accepts_a_large_message() -> None:
    body = b"y" * 998 + b"\r\n"
    body *= 1000  # ~1 MB, several reader chunks
    result, _ = await read(body + b".\r\n", limit=None, chunk=65536)
    assert result.content == body


@pytest.mark.parametrize("chunk", [1, 1 << 20])
@pytest.mark.parametrize(
    "partial", [b"", b"Subject: x\r\n\r\nbody", b"body\r\n.", b"body\r\n.\r", b"body\r\n"],
    ids=["nothing", "mid-line", "dot", "dot-cr", "after-crlf"],
)
async def test_eof_before_the_terminator_raises_connection_reset(partial: bytes, chunk: int) -> None:
    with pytest.raises(ConnectionResetError):
        await read(partial, chunk=chunk)


async def test_eof_while_discarding_an_oversized_message_raises_connection_reset() -> None:
    with pytest.raises(ConnectionResetError):
        await read(b"z" * 50_000, limit=1000, chunk=4096)


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
async def test_a_message_of_dot_lines_within_the_limit_is_accepted(chunk: int) -> None:
    """RFC 1870 counts the message, not the wire: 9 000 bytes of lines that begin with a dot
    are 12 000 bytes on the wire. The old reader gave up once the wire passed limit + 2 % + 1 KiB."""
    body = b"..\r\n" * 3000
    result, _ = await read(body + b".\r\n", limit=10_000, chunk=chunk)
    assert result.content == b".\r\n" * 3000
    assert result.message_bytes == 9000
    over, _ = await read(b"..\r\n" * 3334 + b".\r\n", limit=10_000, chunk=chunk)  # 10 002 bytes
    assert over.content is None
    assert over.message_bytes > 10_000


async def test_any_wire_in_any_chunks_reads_as_the_rule_says() -> None:
    """Random wires of dots, line ends and text, fed in random chunk sizes: the content is
    everything before the first CRLF "." CRLF (counting a CRLF in front of the first line)
    with each CRLF "." losing its dot, refused only when over the limit, and the bytes after
    the terminator are left to the session."""
    import random

    rng = random.Random(17)
    parts = [b"a", b"bc", b".", b"..", b"\r\n", b"\r\n", b"\r", b"\n", b"\r\n.", b" "]
    for _ in range(1500):
        body = b"".join(rng.choice(parts) for _ in range(rng.randint(0, 30)))
        wire = body + rng.choice([b"\r\n.\r\n", b".\r\n"]) + b"NOOP\r\n"
        framed = b"\r\n" + wire
        end = framed.find(TERMINATOR)
        if end < 0:  # the random body swallowed the ending (".." + ".\r\n" is a stuffed line)
            with pytest.raises(ConnectionResetError):
                await read(wire, limit=rng.choice([None, 3]), chunk=rng.choice([1, 2, 3, 5, 8, 64]))
            continue
        expected = framed[:end + 2].replace(b"\r\n.", b"\r\n")[2:]
        limit = rng.choice([None, len(expected), max(0, len(expected) - 1), max(0, len(expected) - 5), len(expected) + 3])
        result, rest = await read(wire, limit=limit, chunk=rng.choice([1, 2, 3, 5, 8, 64]))
        want = expected if limit is None or len(expected) <= limit else None
        assert result.content == want, (wire, limit)
        assert result.leftover + rest == framed[end + len(TERMINATOR):], wire
        assert result.received_bytes == end + len(TERMINATOR) - 2
