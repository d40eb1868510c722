"""Property-based tests (hypothesis) for every parser that sees attacker bytes.

Properties, not examples: what is delivered equals what was sent after SMTP
transparency, whatever the chunking; parsers never raise anything but their
documented error; removal of forged headers touches nothing else; a torn or
corrupted journal tail never hides an intact record before it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import authres
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sesmail_gateway import journal
from sesmail_gateway.checks import rfc5322
from sesmail_gateway.checks.dmarc import FROM_PROBLEMS, from_domain
from sesmail_gateway.checks.headers import header_fields, unfold
from sesmail_gateway.checks.policy import strip_forged_authentication_results
from sesmail_gateway.routes.records import normalise_pattern
from sesmail_gateway.routes.resolver import candidates, normalise_address
from sesmail_gateway.smtp.data import read_data
from sesmail_gateway.smtp.handler import split_address

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ID = "mx.example.com"

# -- the DATA reader ---------------------------------------------------------------------------

# A line: any bytes but the CRLF pair (a bare CR or LF inside a line is content, never a line end).
lines = st.lists(st.binary(max_size=40).filter(lambda b: b"\r\n" not in b and not b.endswith(b"\r")),
                 max_size=30)


def stuffed(content_lines: list[bytes]) -> bytes:
    """What a conforming client sends (RFC 5321 4.5.2): a dot doubled at the start of each line."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in content_lines)


async def feed_and_read(wire: bytes, cuts: list[int], limit: int | None) -> tuple[object, bytes]:
    reader = asyncio.StreamReader()
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})

    async def feed() -> None:
        for start, end in zip(points, points[1:], strict=False):
            reader.feed_data(wire[start:end])
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    result = await asyncio.wait_for(read_data(reader, limit), timeout=10)
    await feeder
    return result, await reader.read()


@SETTINGS
@given(content_lines=lines, cuts=st.lists(st.integers(min_value=0), max_size=12),
       pipelined=st.binary(max_size=30))
def test_what_is_read_is_what_was_sent_whatever_the_split(content_lines: list[bytes], cuts: list[int],
                                                          pipelined: bytes) -> None:
    content = b"".join(line + b"\r\n" for line in content_lines)
    wire = stuffed(content_lines) + b".\r\n"
    result, rest = asyncio.run(feed_and_read(wire + pipelined, cuts, None))
    assert result.content == content  # type: ignore[attr-defined]
    assert result.message_bytes == len(content)  # type: ignore[attr-defined]
    assert result.received_bytes == len(wire)  # type: ignore[attr-defined]
    assert result.leftover + rest == pipelined  # type: ignore[attr-defined]


@SETTINGS
@given(content_lines=lines, cuts=st.lists(st.integers(min_value=0), max_size=8), slack=st.integers(-3, 3))
def test_the_limit_counts_the_message_not_the_wire(content_lines: list[bytes], cuts: list[int], slack: int) -> None:
    """RFC 1870: stuffed dots and the terminator are not the message. At the limit: accepted."""
    content = b"".join(line + b"\r\n" for line in content_lines)
    limit = len(content) + slack
    assume(limit >= 0)
    result, _ = asyncio.run(feed_and_read(stuffed(content_lines) + b".\r\n", cuts, limit))
    assert (result.content == content) is (slack >= 0)  # type: ignore[attr-defined]
    assert (result.content is None) is (slack < 0)  # type: ignore[attr-defined]


# -- header fields, unfolding ----------------------------------------------------------------------

@SETTINGS
@given(message=st.binary(max_size=400))
def test_header_fields_cover_the_header_block_byte_for_byte(message: bytes) -> None:
    fields = header_fields(message)
    block = b"".join(field.raw for field in fields)
    assert message.startswith(block)
    rest = message[len(block):]
    assert rest == b"" or rest.startswith((b"\r\n", b"\n"))
    for field in fields:
        assert message[field.start:field.end] == field.raw
        assert "\r\n " not in unfold(field.value) and "\n\t" not in unfold(field.value)


# -- the From domain ------------------------------------------------------------------------------

@SETTINGS
@given(value=st.binary(max_size=300))
def test_from_domain_never_raises(value: bytes) -> None:
    domain, problem = from_domain(b"From: " + value + b"\r\n\r\nbody")
    assert (domain and not problem) or (not domain and problem in FROM_PROBLEMS)


atoms = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
domains = st.lists(atoms, min_size=2, max_size=4).map(".".join)
display = st.text(alphabet=st.characters(codec="utf-8", exclude_characters='"\\\r\n'), max_size=20)


@SETTINGS
@given(local=atoms, domain=domains, name=display, depth=st.integers(0, 3000), comment=display)
def test_the_author_domain_is_found_behind_any_display_name_and_comments(
        local: str, domain: str, name: str, depth: int, comment: str) -> None:
    escaped = comment.replace("(", "\\(").replace(")", "\\)")
    value = f'"{name}" ' + "(" * depth + escaped + ")" * depth + f" <{local}@{domain}>"
    assert from_domain(f"From: {value}\r\n\r\n".encode()) == (domain, "")


# -- forged Authentication-Results --------------------------------------------------------------

cfws = st.lists(st.sampled_from([" ", "\t", "\r\n ", "()", "(x)", r"(\))", r"(\()", "(a (b) c)", "(" * 5 + ")" * 5]),
                max_size=6).map("".join)


@SETTINGS
@given(before=cfws, after=st.text(alphabet="abc=; ", max_size=20), case=st.booleans(),
       other=st.binary(max_size=200))
def test_our_authserv_id_behind_any_cfws_is_removed_and_nothing_else_changes(
        before: str, after: str, case: bool, other: bytes) -> None:
    ours = (ID.upper() if case else ID)
    forged = f"Authentication-Results: {before}{ours}; {after}\r\n".encode()
    rest = b"From: a@b.example\r\n\r\n" + other
    assert strip_forged_authentication_results(forged + rest, ID) == rest


@SETTINGS
@given(message=st.binary(max_size=500))
def test_stripping_never_raises_keeps_the_body_and_is_idempotent(message: bytes) -> None:
    once = strip_forged_authentication_results(message, ID)
    assert strip_forged_authentication_results(once, ID) == once
    block = b"".join(f.raw for f in header_fields(message))
    assert once.endswith(message[len(block):])


@SETTINGS
@given(value=st.text(alphabet=st.sampled_from(list(" ()\\;\"a.bxm=\t")), max_size=40))
def test_authserv_id_agrees_with_the_reference_parser_where_it_gives_one(value: str) -> None:
    try:
        reference = authres.AuthenticationResultsHeader.parse_value(value + "; none").authserv_id
    except Exception:  # the reference parser refuses more than RFC 8601 does
        return
    assert rfc5322.authserv_id(value + "; none") == reference


# -- journal records ---------------------------------------------------------------------------

records = st.lists(st.tuples(st.binary(max_size=50), st.binary(max_size=200)), min_size=1, max_size=5)


@SETTINGS
@given(items=records, cut=st.integers(min_value=0), flip=st.integers(min_value=0), garbage=st.binary(max_size=40))
def test_a_torn_or_corrupted_tail_never_hides_an_intact_record_before_it(
        tmp_path_factory: pytest.TempPathFactory, items: list[tuple[bytes, bytes]], cut: int, flip: int,
        garbage: bytes) -> None:
    encoded = [b"".join(journal.encode(meta, [message])) for meta, message in items]
    intact = b"".join(encoded[:-1])
    last = encoded[-1]
    torn = last[: cut % len(last)]  # the last record cut short anywhere
    corrupted = bytearray(last)
    corrupted[flip % len(last)] ^= 0xFF  # or one byte of it changed
    folder = tmp_path_factory.mktemp("journal")
    for name, tail in (("torn", torn + garbage), ("corrupt", bytes(corrupted) + garbage)):
        path = folder / f"{name}.wal"
        path.write_bytes(intact + tail)
        # Every record before the damage is read; the damaged one never (the CRC covers it). A tail
        # whose garbage happens to put back exactly the bytes that were cut off is no damage at all.
        whole = name == "torn" and tail.startswith(last)
        assert [(r.meta, r.message) for r in journal.read_records(path)] == (items if whole else items[:-1]), name


def test_a_journal_of_intact_records_reads_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "j.wal"
    path.write_bytes(b"".join(b"".join(journal.encode(b"m%d" % i, [b"x" * i])) for i in range(5)))
    assert [(r.meta, r.message) for r in journal.read_records(path)] == [(b"m%d" % i, b"x" * i) for i in range(5)]


# -- route patterns and addresses -------------------------------------------------------------

@SETTINGS
@given(text=st.text(max_size=60))
def test_route_patterns_either_normalise_or_raise_value_error(text: str) -> None:
    try:
        pattern = normalise_pattern(text)
    except ValueError:
        return
    assert pattern == pattern.lower() and normalise_pattern(pattern) == pattern


@SETTINGS
@given(text=st.text(max_size=60))
def test_addresses_never_raise_and_always_end_at_the_catch_all(text: str) -> None:
    address = normalise_address(text)
    tried = candidates(address)
    assert tried[0] == ("exact", address) and tried[-1] == ("catch-all", "*")
    parts = split_address(text)
    assert parts is None or (parts[0] and parts[1] and "@" not in parts[1])
