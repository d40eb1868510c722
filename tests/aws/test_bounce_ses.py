"""DSNs through SES (moto server) from the real gateway daemon with ``bounce.mode = "dsn"``."""

from __future__ import annotations

import email
import smtplib
from collections.abc import Callable
from typing import Any

from moto.backends import get_backend
from moto.core import DEFAULT_ACCOUNT_ID

from tests.aws.motoserver import REGION, Moto
from tests.conftest import Gateway, wait_for

MESSAGE = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: will bounce\r\n"
           b"Message-ID: <orig-1@sender.test>\r\n\r\nthe body must not come back\r\n")


def sent_to(address: str) -> list[Any]:
    """What moto's SES accepted for ``address`` (moto's documented internal API, read in this process)."""
    backend = get_backend("ses")[DEFAULT_ACCOUNT_ID][REGION]
    return [m for m in backend.sent_messages if address in getattr(m, "destinations", [])]


def dsn_gateway(make_gateway: Callable[..., Gateway], moto: Moto) -> Gateway:
    moto.client("ses").verify_domain_identity(Domain="example.test")
    gateway = make_gateway({"bounce": {"mode": "dsn", "sender": "mailer-daemon@example.test"},
                            "aws": moto.aws_section}, start=False)
    gateway.dns.add("sender.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    gateway.dns.add("forged.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    gateway.start()
    gateway.cli("routes", "add", "nobody@example.test", "--action", "bounce")
    return gateway


def send(gateway: Gateway, sender: str, body: bytes = MESSAGE) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.sendmail(sender, ["nobody@example.test"], body)


def dsn_events(gateway: Gateway) -> list[dict[str, Any]]:
    return gateway.events("dsn")


def test_bounce_rule_sends_one_valid_dsn_to_an_spf_authenticated_sender(
    make_gateway: Callable[..., Gateway], moto: Moto, unique: Callable[[str], str]
) -> None:
    gateway = dsn_gateway(make_gateway, moto)
    sender = f"{unique('alice')}@sender.test"
    send(gateway, sender)
    event = wait_for(lambda: dsn_events(gateway))[0]
    assert event["sent"] is True and event["to"] == sender
    wait_for(lambda: gateway.events("dead"))

    (message,) = sent_to(sender)
    assert message.source == "mailer-daemon@example.test"
    dsn = email.message_from_string(message.raw_data)
    assert dsn.get_content_type() == "multipart/report" and dsn.get_param("report-type") == "delivery-status"
    text, status, headers = dsn.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    recipient = status.get_payload()[1]
    assert (recipient["Final-Recipient"], recipient["Status"]) == ("rfc822; nobody@example.test", "5.1.1")
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <orig-1@sender.test>" in headers.get_payload()
    assert "the body must not come back" not in message.raw_data
    assert dsn["Message-ID"] == event["dsn"]


def test_unauthenticated_null_and_report_senders_get_no_dsn_and_the_log_says_why(
    make_gateway: Callable[..., Gateway], moto: Moto, unique: Callable[[str], str]
) -> None:
    gateway = dsn_gateway(make_gateway, moto)
    forged = f"{unique('victim')}@forged.test"
    send(gateway, forged)
    send(gateway, "")
    report_sender = f"{unique('daemon')}@sender.test"
    send(gateway, report_sender, b'Content-Type: multipart/report; boundary="b"\r\nSubject: r\r\n\r\n--b--\r\n')
    events = wait_for(lambda: len(dsn_events(gateway)) == 3 and dsn_events(gateway))
    reasons = {e["to"]: e["reason"] for e in events}
    assert all(e["sent"] is False for e in events)
    assert reasons[forged].startswith("sender not authenticated (spf=fail")
    assert reasons["<>"] == "null sender"
    assert reasons[report_sender] == "message is a delivery or disposition report"
    assert sent_to(forged) == [] and sent_to(report_sender) == []
    wait_for(lambda: len(gateway.events("dead")) == 3)  # still dead letters, with their reason
