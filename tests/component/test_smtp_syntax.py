"""Malformed commands from a real client: a 5xx syntax error and one log line, never a 451,
a traceback or a rule-store failure (found by fuzzing the session)."""

from __future__ import annotations

import pytest
from conftest import Gateway

from tests.helpers import RawSMTP


def session(gw: Gateway) -> RawSMTP:
    client = RawSMTP(gw.port)
    assert client.reply().startswith("220 ")
    assert client.command(b"EHLO client.test").startswith("250-")
    return client


@pytest.mark.parametrize(("line", "code"), [
    (b"MAIL FROM:<", "553"),
    (b"MAIL FROM:<" + b"(" * 400 + b"a@b.test>", "553"),
    (b"MAIL FROM:<\xff\xfe@elsewhere.test>", "553"),
    (b"MAIL FROM:<a@b.test", "553"),
])
def test_malformed_sender_is_a_syntax_error(gateway: Gateway, line: bytes, code: str) -> None:
    client = session(gateway)
    reply = client.command(line)
    assert reply.startswith(code), reply
    assert client.command(b"MAIL FROM:<sender@elsewhere.test>") == "250 2.1.0 Sender ok"
    client.close()
    assert "Traceback" not in gateway.log()
    assert [e["stage"] for e in gateway.events("rejected")] == ["mail"]


@pytest.mark.parametrize("line", [
    b"RCPT TO:<\xffx@example.test>",
    b"RCPT TO:<x\xff@example.test>",
    b"RCPT TO:<",
])
def test_malformed_recipient_is_a_syntax_error_not_a_store_failure(gateway: Gateway, line: bytes) -> None:
    client = session(gateway)
    assert client.command(b"MAIL FROM:<sender@elsewhere.test>") == "250 2.1.0 Sender ok"
    reply = client.command(line)
    assert reply[:1] == "5", reply
    assert client.command(b"RCPT TO:<alice@example.test>") == "250 2.1.5 Recipient ok"
    client.close()
    log = gateway.log()
    assert "Traceback" not in log and "lookup for" not in log
    rejected = gateway.events("rejected")
    assert len(rejected) == 1 and rejected[0]["stage"] == "rcpt" and rejected[0]["session"]


@pytest.mark.parametrize("line", [b"VRFY \xff\xfe", b"VRFY <\xff@example.test>", b"VRFY <"])
def test_vrfy_with_bytes_that_are_not_utf8_is_a_syntax_error(gateway: Gateway, line: bytes) -> None:
    client = session(gateway)
    reply = client.command(line)
    assert reply.startswith("501 "), reply
    assert "\ufffd" not in reply and "\\x" not in reply  # no client text echoed
    assert client.command(b"VRFY alice@example.test").startswith("252 ")
    client.close()
    assert "Traceback" not in gateway.log()


def test_every_refusal_is_one_log_line_even_those_aiosmtpd_makes(gateway: Gateway) -> None:
    """503 out of sequence, 501 syntax, 500 too long, unknown commands: each one rejected line,
    with the session id; a refusal our own code logs is not logged twice."""
    client = RawSMTP(gateway.port)
    assert client.reply().startswith("220 ")
    refusals = [client.command(b"MAIL FROM:<a@elsewhere.test>"),  # before EHLO: 503
                client.command(b"EHLO client.test"),
                client.command(b"RCPT TO:<alice@example.test>"),  # before MAIL: 503
                client.command(b"MAIL FROM:"),  # 501
                client.command(b"FROB"),  # 500
                client.command(b"NOOP " + b"x" * 2000),  # 500 line too long
                client.command(b"MAIL FROM:<a@elsewhere.test>"),
                client.command(b"RCPT TO:<x@foreign.example>")]  # 550, logged by the handler
    client.close()
    codes = [reply[:3] for reply in refusals]
    assert codes == ["503", "250", "503", "501", "500", "500", "250", "550"], refusals
    rejected = gateway.events("rejected")
    assert [e["reply"][:3] for e in rejected] == ["503", "503", "501", "500", "500", "550"]
    assert len({e["session"] for e in rejected}) == 1
    assert [e["stage"] for e in rejected][:4] == ["mail", "rcpt", "mail", "unknown"]
