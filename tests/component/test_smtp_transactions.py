"""The SMTP session against the real daemon: HELP, drain, size refusals, SPF timing, session ids."""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Callable

from conftest import Gateway, wait_for

from tests.helpers import RawSMTP

QUEUED = re.compile(r"250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)")


def session(gw: Gateway) -> RawSMTP:
    client = RawSMTP(gw.port)
    assert client.reply().startswith("220 ")
    assert client.command(b"EHLO client.test").startswith("250-")
    return client


def refused_at_connect(port: int) -> bool:
    """True once a new connection is answered 421 4.3.2 (the drain has begun)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            return sock.recv(512).startswith(b"421 4.3.2 ")
    except OSError:
        return False


def test_help_lists_every_command_and_gives_each_ones_syntax(gateway: Gateway) -> None:
    client = session(gateway)
    reply = client.command(b"HELP")
    assert reply.startswith("250 Supported commands: ")
    listed = set(reply.removeprefix("250 Supported commands: ").split())
    assert {"DATA", "EHLO", "HELO", "HELP", "MAIL", "NOOP", "QUIT", "RCPT", "RSET", "VRFY"} <= listed
    assert "AUTH" not in listed
    assert client.command(b"HELP MAIL") == "250 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
    for command in sorted(listed):
        assert client.command(b"HELP " + command.encode()).startswith("250 Syntax: " + command), command
    assert client.command(b"HELP AUTH").startswith("501 ")
    client.close()


def test_sigterm_lets_a_transaction_past_mail_from_finish(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    assert gw.proc is not None
    sending, idle, after_rset = RawSMTP(gw.port), session(gw), session(gw)
    try:
        sending.start_transaction()  # MAIL and RCPT accepted before the signal
        assert after_rset.command(b"MAIL FROM:<other@elsewhere.test>").startswith("250 ")

        gw.signal(signal.SIGTERM)
        wait_for(lambda: refused_at_connect(gw.port))
        assert idle.line().startswith("421 4.3.2 ")  # no transaction: let go at once

        # The transaction under way finishes: DATA is accepted and queued, then the session ends.
        assert sending.command(b"RCPT TO:<bob@example.test>") == "250 2.1.5 Recipient ok"
        assert sending.command(b"DATA").startswith("354 ")
        reply = sending.command(b"From: s@elsewhere.test\r\nSubject: drained\r\n\r\nbody\r\n.")
        queue_id = QUEUED.fullmatch(reply)
        assert queue_id, reply
        assert sending.line().startswith("421 4.3.2 ")
        assert sending.closed()

        # A new transaction is refused; so is RSET, which ends the one under way.
        assert after_rset.command(b"RSET").startswith("421 4.3.2 ")
        assert after_rset.closed()
    finally:
        for client in (sending, idle, after_rset):
            client.close()
    assert gw.proc.wait(timeout=20) == 0
    assert [e["queue_id"] for e in gw.events("queued")] == [queue_id.group(1)]


def test_new_transaction_during_a_drain_is_refused(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    holding, fresh = RawSMTP(gw.port), session(gw)
    try:
        holding.start_transaction()
        assert fresh.command(b"MAIL FROM:<a@elsewhere.test>").startswith("250 ")
        assert fresh.command(b"RCPT TO:<alice@example.test>").startswith("250 ")
        assert fresh.command(b"DATA").startswith("354 ")
        assert fresh.command(b"Subject: one\r\n\r\nx\r\n.").startswith("250 ")
        gw.signal(signal.SIGTERM)
        wait_for(lambda: refused_at_connect(gw.port))
        # fresh has finished its transaction: it is between transactions and is let go.
        assert fresh.line().startswith("421 4.3.2 ")
        assert holding.command(b"DATA").startswith("354 ")
        assert holding.command(b"Subject: two\r\n\r\nx\r\n.").startswith("250 ")
    finally:
        holding.close()
        fresh.close()


def test_size_refusals_are_logged_once_each(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"smtp": {"max_message_size": 1000}})
    client = session(gw)
    assert client.command(b"MAIL FROM:<a@elsewhere.test> SIZE=5000").startswith("552 5.3.4 ")
    assert client.command(b"MAIL FROM:<a@elsewhere.test> SIZE=900").startswith("250 ")
    assert client.command(b"RCPT TO:<alice@example.test>").startswith("250 ")
    assert client.command(b"DATA").startswith("354 ")
    assert client.command(b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n.").startswith("552 5.3.4 ")
    client.close()
    rejected = gw.events("rejected")
    assert [(e["stage"], e["reply"][:3]) for e in rejected] == [("mail", "552"), ("data", "552")]
    assert all(e["session"] and "1000" in e["reason"] for e in rejected)


def test_a_dot_stuffed_message_within_size_is_accepted(make_gateway: Callable[..., Gateway]) -> None:
    """RFC 1870: the stuffed dots are not part of the message. 900 000 bytes of content are
    1 200 000 on the wire, several reads long: the old reader gave up past the limit + 2 %."""
    gw = make_gateway({"smtp": {"max_message_size": 1_000_000}})
    client = session(gw)
    assert client.command(b"MAIL FROM:<a@elsewhere.test> SIZE=900000").startswith("250 ")
    assert client.command(b"RCPT TO:<alice@example.test>").startswith("250 ")
    assert client.command(b"DATA").startswith("354 ")
    assert QUEUED.fullmatch(client.command(b"..\r\n" * 300_000 + b"."))
    client.close()


def test_spf_starts_at_the_first_accepted_recipient(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    gw.dns.add("sender.example", "TXT", "v=spf1 -all")
    client = session(gw)
    assert client.command(b"MAIL FROM:<someone@sender.example>").startswith("250 ")
    assert client.command(b"RCPT TO:<x@foreign.example>").startswith("550 ")
    assert client.command(b"NOOP").startswith("250 ")
    assert gw.dns.query_count("sender.example") == 0  # refused recipients cost no DNS
    assert client.command(b"RCPT TO:<alice@example.test>").startswith("250 ")
    wait_for(lambda: gw.dns.query_count("sender.example", "TXT") >= 1)
    client.close()


def test_every_line_of_one_connection_carries_its_session_id(gateway: Gateway) -> None:
    client = session(gateway)
    assert client.command(b"MAIL FROM:<a@elsewhere.test>").startswith("250 ")
    assert client.command(b"RCPT TO:<x@foreign.example>").startswith("550 ")
    assert client.command(b"QUIT").startswith("221 ")
    client.close()
    [rejected] = gateway.events("rejected")
    sid = rejected["session"]
    assert re.fullmatch(r"[0-9a-f]{12}", sid)
    wait_for(lambda: f"session {sid}: closed" in gateway.log())
    assert f"session {sid}: connect from 127.0.0.1" in gateway.log()
