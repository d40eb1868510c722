"""The SMTP session over real sockets: limits, timeouts, smuggling, pipelining, TLS, signals.

Raw sockets where the exact bytes matter (smuggling, pipelining, limits),
smtplib elsewhere. Every test runs against the real daemon subprocess.
"""

from __future__ import annotations

import datetime
import re
import signal
import smtplib
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Gateway, wait_for, without_auth_results
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import RawSMTP

QUEUED = re.compile(r"250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)")
MESSAGE = b"From: s@elsewhere.test\r\nSubject: t\r\n\r\nbody\r\n"


def banner(port: int, source: str = "127.0.0.1") -> str:
    """The first line a new connection gets, and close it."""
    raw = RawSMTP(port, source=source)
    try:
        return raw.line()
    finally:
        raw.close()


def queued(reply: str) -> str:
    match = QUEUED.fullmatch(reply)
    assert match, f"not a queued reply: {reply!r}"
    return match.group(1)


def events_for(gw: Gateway, name: str) -> list[str]:
    return [e["queue_id"] for e in gw.events(name)]


def spool_ids(gw: Gateway, state: str) -> list[str]:
    folder = gw.data_dir / "spool" / state
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- size ---------------------------------------------------------------------------


def test_size_over_the_limit_is_refused_at_mail_and_at_data(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"smtp": {"max_message_size": 10_000}})
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "10000"
        code, text = client.mail("sender@elsewhere.test", ["SIZE=10001"])
        assert (code, text[:6]) == (552, b"5.3.4 ")
        assert client.mail("sender@elsewhere.test", ["SIZE=10000"]) == (250, b"2.1.0 Sender ok")
        assert client.rcpt("alice@example.test")[0] == 250
        # SIZE= was a promise; the limit is enforced on the bytes actually sent.
        big = b"From: s@elsewhere.test\r\nSubject: big\r\n\r\n" + (b"x" * 98 + b"\r\n") * 300
        code, text = client.data(big)
        assert (code, text[:6]) == (552, b"5.3.4 ")
        # The session stayed in step and can carry a normal message.
        assert client.mail("sender@elsewhere.test") == (250, b"2.1.0 Sender ok")
        assert client.rcpt("alice@example.test")[0] == 250
        code, text = client.data(MESSAGE)
        qid = queued(f"{code} {text.decode()}")
        assert client.noop()[0] == 250
    [delivered] = gw.wait_delivered(1)
    assert delivered.endswith(MESSAGE)
    assert events_for(gw, "queued") == [qid]
    assert events_for(gw, "received") == [qid]


# --- DATA framing ---------------------------------------------------------------------

SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r"]


@pytest.mark.parametrize("fake_end", SMUGGLING, ids=["LF.LF", "LF.CRLF", "CR.CRLF", "CRLF.LF", "CRLF.CR"])
def test_smuggled_second_message_stays_inside_the_first(
    make_gateway: Callable[..., Gateway], fake_end: bytes,
) -> None:
    gw = make_gateway()
    smuggled = (
        b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
        b"From: ceo@example.test\r\nSubject: smuggled\r\n\r\nevil\r\n"
    )
    raw = RawSMTP(gw.port)
    try:
        raw.start_transaction()
        assert raw.command(b"DATA").startswith("354 ")
        raw.sock.sendall(b"From: s@elsewhere.test\r\nSubject: legit\r\n\r\nhello" + fake_end + smuggled + b".\r\nQUIT\r\n")
        # Exactly one message: one 250 for the one DATA, then QUIT's 221, nothing in between.
        replies = raw.rest()
    finally:
        raw.close()
    assert len(replies) == 2, replies
    qid = queued(replies[0])
    assert replies[1].startswith("221 ")
    assert events_for(gw, "queued") == [qid]
    [delivered] = gw.wait_delivered(1)
    assert smuggled in delivered
    assert b"From: s@elsewhere.test\r\nSubject: legit\r\n\r\nhello" in delivered


def test_pipelined_transactions_in_one_write_get_every_reply_in_order(
    make_gateway: Callable[..., Gateway],
) -> None:
    gw = make_gateway()
    raw = RawSMTP(gw.port)
    try:
        assert raw.reply().startswith("220 ")
        ehlo = raw.command(b"EHLO client.test").split("\n")
        assert "250-PIPELINING" in ehlo
        raw.sock.sendall(
            b"MAIL FROM:<sender@elsewhere.test>\r\n"
            b"RCPT TO:<alice@example.test>\r\n"
            b"RCPT TO:<nobody@relay.test>\r\n"
            b"DATA\r\n"
            b"From: s@elsewhere.test\r\nSubject: one\r\n\r\nfirst\r\n.\r\n"
            b"MAIL FROM:<sender@elsewhere.test>\r\n"
            b"RCPT TO:<bob@example.test>\r\n"
            b"DATA\r\n"
            b"From: s@elsewhere.test\r\nSubject: two\r\n\r\n..second\r\n.\r\n"
            b"QUIT\r\n"
        )
        replies = raw.rest()
    finally:
        raw.close()
    assert [r[:10] for r in replies] == [
        "250 2.1.0 ", "250 2.1.5 ", "550 5.7.1 ", "354 End da", "250 2.0.0 ",
        "250 2.1.0 ", "250 2.1.5 ", "354 End da", "250 2.0.0 ", "221 Bye",
    ]
    ids = [queued(replies[4]), queued(replies[8])]
    assert events_for(gw, "queued") == ids
    messages = gw.wait_delivered(2)
    assert sorted(m.split(b"\r\n\r\n", 1)[1] for m in messages) == [b".second\r\n", b"first\r\n"]


def test_empty_message_is_accepted(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    raw = RawSMTP(gw.port)
    try:
        raw.start_transaction()
        assert raw.command(b"DATA") == "354 End data with <CR><LF>.<CR><LF>"
        qid = queued(raw.command(b"."))
        assert raw.command(b"QUIT") == "221 Bye"
    finally:
        raw.close()
    [delivered] = gw.wait_delivered(1)
    # Nothing but our own trace header.
    delivered = without_auth_results(delivered)
    assert delivered.startswith(b"Received: from client.test ")
    assert f"id {qid}\r\n".encode() in delivered
    assert delivered.count(b"\r\n") == 3 and delivered.endswith(b" -0000\r\n")


# --- connection limits ------------------------------------------------------------------


def test_per_ip_connection_limit(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"smtp": {"max_connections_per_ip": 2}})
    first, second = RawSMTP(gw.port), RawSMTP(gw.port)
    try:
        assert first.line().startswith("220 ")
        assert second.line().startswith("220 ")
        third = RawSMTP(gw.port)
        assert third.line().startswith("421 4.7.0 ")
        assert third.closed()
        third.close()
        # Another address is not held back by this one's sessions.
        assert banner(gw.port, source="127.0.0.2").startswith("220 ")
        first.close()
        wait_for(lambda: banner(gw.port).startswith("220 "), timeout=5)
        # The admitted sessions still work.
        assert second.command(b"EHLO client.test").startswith("250-")
    finally:
        first.close()
        second.close()


def test_global_connection_limit(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"smtp": {"max_connections": 2, "max_connections_per_ip": 10}})
    first, second = RawSMTP(gw.port, source="127.0.0.2"), RawSMTP(gw.port, source="127.0.0.3")
    try:
        assert first.line().startswith("220 ")
        assert second.line().startswith("220 ")
        # A third address, with no session of its own, is still refused: the server is full.
        refused = RawSMTP(gw.port, source="127.0.0.4")
        assert refused.line().startswith("421 4.7.0 ")
        assert refused.closed()
        refused.close()
        second.close()
        wait_for(lambda: banner(gw.port, source="127.0.0.4").startswith("220 "), timeout=5)
    finally:
        first.close()
        second.close()


def test_junk_commands_over_the_limit_end_the_session(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"smtp": {"junk_command_limit": 5}})
    raw = RawSMTP(gw.port)
    try:
        assert raw.reply().startswith("220 ")
        assert raw.command(b"EHLO client.test").startswith("250-")
        for _ in range(5):
            assert raw.command(b"NOOP").startswith("250 ")
        assert raw.command(b"NOOP").startswith("421 4.7.0 ")
        assert raw.closed()
    finally:
        raw.close()


def test_unknown_commands_count_against_the_junk_limit(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"smtp": {"junk_command_limit": 8}})
    raw = RawSMTP(gw.port)
    try:
        assert raw.reply().startswith("220 ")
        assert raw.command(b"EHLO client.test").startswith("250-")
        # More than aiosmtpd's own five: the configured budget decides, not the library.
        for _ in range(7):
            assert raw.command(b"XFOO bar") == "500 5.5.2 Error: command not recognized"
        assert raw.command(b"RSET").startswith("250 ")
        assert raw.command(b"XFOO bar").startswith("421 4.7.0 ")
        assert raw.closed()
    finally:
        raw.close()


# --- timeouts -------------------------------------------------------------------------------


def test_idle_client_gets_421_and_is_disconnected(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"smtp": {"command_timeout": 1}})
    raw = RawSMTP(gw.port)
    try:
        assert raw.reply().startswith("220 ")
        assert raw.command(b"EHLO client.test").startswith("250-")
        started = time.monotonic()
        assert raw.line().startswith("421 4.4.2 ")
        assert 0.5 < time.monotonic() - started < 5
        assert raw.closed()
    finally:
        raw.close()


def test_each_command_moves_the_idle_deadline(make_gateway: Callable[..., Gateway]) -> None:
    """The session's one timer fires at the first deadline, finds it moved by later commands, and waits on;
    once the client goes quiet the 421 comes a command timeout after its last command."""
    gw = make_gateway({"smtp": {"command_timeout": 1}})
    raw = RawSMTP(gw.port)
    try:
        assert raw.reply().startswith("220 ")
        assert raw.command(b"EHLO client.test").startswith("250-")
        started = time.monotonic()
        for _ in range(5):  # a slow client: a command every 0.4 s, 2 s in all, twice the timeout
            time.sleep(0.4)
            assert raw.command(b"NOOP").startswith("250 ")
        last = time.monotonic()
        assert last - started > 1.5
        assert raw.line().startswith("421 4.4.2 ")
        assert 0.5 < time.monotonic() - last < 5
        assert raw.closed()
    finally:
        raw.close()


def test_client_stalling_in_data_gets_421_and_nothing_is_queued(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"smtp": {"data_timeout": 1, "command_timeout": 30}})
    raw = RawSMTP(gw.port)
    try:
        raw.start_transaction()
        assert raw.command(b"DATA").startswith("354 ")
        raw.sock.sendall(b"From: s@elsewhere.test\r\nSubject: slow\r\n\r\npart of the bo")
        started = time.monotonic()
        assert raw.line().startswith("421 4.4.2 ")
        assert 0.5 < time.monotonic() - started < 5
        assert raw.closed()
    finally:
        raw.close()
    assert not gw.events("received")
    assert not gw.events("queued")
    assert spool_ids(gw, "incoming") == spool_ids(gw, "tmp") == []
    assert gw.delivered() == []


# --- extensions ------------------------------------------------------------------------------


def test_ehlo_offers_no_auth_and_no_starttls_without_a_certificate(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as client:
        code, _ = client.ehlo()
        assert code == 250
        assert set(client.esmtp_features) == {"size", "8bitmime", "smtputf8", "pipelining", "help"}
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA==")
        assert (code, text[:6]) == (502, b"5.5.1 ")
        assert client.docmd("STARTTLS") == (454, b"TLS not available")


def make_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mx.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    ))
    return cert_path, key_path


def test_starttls_works_and_the_received_header_says_esmtps(
    make_gateway: Callable[..., Gateway], tmp_path: Path,
) -> None:
    cert, key = make_certificate(tmp_path)
    gw = make_gateway({"smtp": {"tls_cert": str(cert), "tls_key": str(key)}})
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert not client.has_extn("auth")
        assert client.starttls(context=context)[0] == 220
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        client.ehlo()
        # After the handshake: no second STARTTLS, and still no AUTH on an MX.
        assert not client.has_extn("starttls")
        assert not client.has_extn("auth")
        assert client.mail("sender@elsewhere.test") == (250, b"2.1.0 Sender ok")
        assert client.rcpt("alice@example.test")[0] == 250
        code, text = client.data(MESSAGE)
        qid = queued(f"{code} {text.decode()}")
    [delivered] = gw.wait_delivered(1)
    assert f"with ESMTPS id {qid}".encode() in delivered
    assert without_auth_results(delivered).startswith(b"Received: from client.test (")


# --- signals ---------------------------------------------------------------------------------


def test_sigterm_drains_refuses_new_sessions_and_loses_nothing(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    assert gw.proc is not None
    in_data, idle = RawSMTP(gw.port), RawSMTP(gw.port)
    try:
        in_data.start_transaction()
        assert in_data.command(b"DATA").startswith("354 ")
        in_data.sock.sendall(b"From: s@elsewhere.test\r\nSubject: in flight\r\n\r\nfirst half, ")
        assert idle.reply().startswith("220 ")
        assert idle.command(b"EHLO client.test").startswith("250-")

        gw.signal(signal.SIGTERM)
        # A session between commands is told and let go at once.
        assert idle.line().startswith("421 4.3.2 ")
        assert idle.closed()
        # New sessions are refused while the drain waits for the DATA in flight.
        assert banner(gw.port).startswith("421 4.3.2 ")
        assert gw.proc.poll() is None

        in_data.sock.sendall(b"second half\r\n.\r\n")
        qid = queued(in_data.reply())
        assert in_data.line().startswith("421 4.3.2 ")
        assert in_data.closed()
    finally:
        in_data.close()
        idle.close()
    assert gw.proc.wait(timeout=20) == 0
    assert events_for(gw, "queued") == [qid]

    # Delivered already, or still in the spool; a restart delivers it exactly once.
    gw.start()
    [delivered] = gw.wait_delivered(1)
    assert delivered.endswith(b"From: s@elsewhere.test\r\nSubject: in flight\r\n\r\nfirst half, second half\r\n")
    assert f"id {qid}\r\n".encode() in delivered


def test_sighup_clears_the_rules_cache(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"rules": {"cache_seconds": 3600}}, start=False)
    gw.cli("routes", "add", "moved@example.test", "--action", "maildir", "--target", "old")
    gw.cli("routes", "add", "closed@example.test", "--action", "maildir", "--target", "old")
    gw.start()

    def rcpt(recipient: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as client:
            client.ehlo()
            client.mail("sender@elsewhere.test")
            return client.rcpt(recipient)

    def send(recipient: str) -> None:
        with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as client:
            client.ehlo()
            client.mail("sender@elsewhere.test")
            assert client.rcpt(recipient) == (250, b"2.1.5 Recipient ok")
            assert client.data(MESSAGE)[0] == 250

    send("moved@example.test")
    assert rcpt("closed@example.test") == (250, b"2.1.5 Recipient ok")
    gw.cli("routes", "add", "moved@example.test", "--action", "maildir", "--target", "new")
    gw.cli("routes", "add", "closed@example.test", "--action", "bounce")

    # Cached: the old routes still answer.
    assert rcpt("closed@example.test") == (250, b"2.1.5 Recipient ok")
    send("moved@example.test")
    gw.wait_delivered(2, gw.data_dir / "old")

    gw.signal(signal.SIGHUP)
    wait_for(lambda: rcpt("closed@example.test")[0] == 550, timeout=5)
    code, text = rcpt("closed@example.test")
    assert (code, text[:6]) == (550, b"5.1.1 ")
    send("moved@example.test")
    gw.wait_delivered(1, gw.data_dir / "new")
    assert len(gw.delivered(gw.data_dir / "old")) == 2
