"""The RFC 3464 builder and the backscatter rules, as pure functions."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

from sesmail_gateway.bounce import Bouncer, failed_recipients
from sesmail_gateway.bounce.dsn import (
    FailedRecipient,
    build_dsn,
    header_section,
    why_not_authenticated,
    why_not_automatic,
)
from sesmail_gateway.message import FAILED, Delivery, QueueItem, RecipientRoute

ORIGINAL = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: hello\r\n"
            b"Message-ID: <m1@sender.test>\r\n\r\nsecret body text\r\n")
SPF_PASS = {"spf": {"result": "pass", "domain": "sender.test", "scope": "mailfrom"}, "dkim": []}


def parse(raw: bytes) -> email.message.Message:
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def test_dsn_is_a_multipart_report_with_status_and_headers_but_no_body() -> None:
    message_id, raw = build_dsn(
        reporting_mta="mx.test", from_address="mailer-daemon@example.test", to_address="alice@sender.test",
        queue_id="Q123", arrival=1767225600.0,
        failed=[FailedRecipient("bob@example.test", "5.1.1", "550 5.1.1 Recipient address rejected"),
                FailedRecipient("eve@example.test", "5.0.0", "550 5.0.0 Delivery failed permanently")],
        original_headers=ORIGINAL,
    )
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only
    dsn = parse(raw)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["Auto-Submitted"] == "auto-replied" and dsn["Message-ID"] == message_id
    assert dsn["To"] == "<alice@sender.test>"
    text, status, headers = dsn.get_payload()
    assert text.get_content_type() == "text/plain" and "bob@example.test" in text.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; mx.test"
    assert blocks[0]["Arrival-Date"] == "Thu, 01 Jan 2026 00:00:00 GMT"
    assert [(b["Final-Recipient"], b["Action"], b["Status"]) for b in blocks[1:]] == [
        ("rfc822; bob@example.test", "failed", "5.1.1"), ("rfc822; eve@example.test", "failed", "5.0.0")]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: hello" in headers.get_payload()
    assert b"secret body text" not in raw


def test_eight_bit_original_headers_are_base64_and_no_field_can_be_injected() -> None:
    _, raw = build_dsn(
        reporting_mta="mx.test", from_address="mailer-daemon@example.test", to_address="a@s.test\r\nBcc: x@y",
        queue_id="Q", arrival=0.0, failed=[FailedRecipient("b@e.test\r\nX-Evil: 1", "5.1.1", "no")],
        original_headers="Subject: Grüße\r\n\r\n".encode(),
    )
    assert raw.isascii()
    dsn = parse(raw)
    assert dsn["Bcc"] is None and b"\r\nX-Evil" not in raw
    assert "Grüße" in dsn.get_payload()[2].get_payload(decode=True).decode()


def test_header_section_stops_at_the_blank_line() -> None:
    assert header_section(ORIGINAL).endswith(b"<m1@sender.test>\r\n")
    assert header_section(b"Subject: x\r\n") == b"Subject: x\r\n"


def test_reports_automatic_replies_and_null_senders_never_get_a_dsn() -> None:
    assert why_not_automatic("", ORIGINAL) == "null sender"
    assert why_not_automatic("MAILER-DAEMON@sender.test", ORIGINAL) == "sender is a mailer-daemon"
    assert why_not_automatic("a@s.test", b"Auto-Submitted: auto-replied\r\n\r\n") == "message is auto-submitted"
    assert why_not_automatic("a@s.test", b"Auto-Submitted: no\r\n\r\n") is None
    report = b'Content-Type: multipart/report;\r\n report-type=delivery-status; boundary="x"\r\n\r\n'
    assert why_not_automatic("a@s.test", report) == "message is a delivery or disposition report"
    assert why_not_automatic("alice@sender.test", ORIGINAL) is None


def test_only_spf_pass_for_the_sender_domain_or_aligned_dkim_authenticates() -> None:
    assert why_not_authenticated("alice@sender.test", SPF_PASS) is None
    helo = {"spf": {"result": "pass", "domain": "sender.test", "scope": "helo"}}
    assert why_not_authenticated("alice@sender.test", helo) is not None
    other = {"spf": {"result": "pass", "domain": "other.test"}}
    assert why_not_authenticated("alice@sender.test", other) is not None
    dkim = {"spf": {"result": "fail", "domain": "sender.test"}, "dkim": [
        {"result": "fail", "domain": "sender.test"}, {"result": "pass", "domain": "mail.sender.test"}]}
    assert why_not_authenticated("alice@sender.test", dkim) is None
    unaligned = {"spf": {"result": "softfail", "domain": "sender.test"},
                 "dkim": [{"result": "pass", "domain": "esp.test"}]}
    assert why_not_authenticated("alice@sender.test", unaligned) == \
        "sender not authenticated (spf=softfail, no aligned dkim pass)"


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, str, str]] = []

    def send(self, raw: bytes, *, source: str, destination: str) -> str:
        self.sent.append((raw, source, destination))
        return f"ses-{len(self.sent)}"


def make_bouncer(tmp_path: Path, sender: _Recorder) -> Bouncer:
    (tmp_path / "message.eml").write_bytes(ORIGINAL)
    return Bouncer(sender=sender, from_address="mailer-daemon@example.test", reporting_mta="mx.test",
                   message_path=lambda item: tmp_path / "message.eml")


def test_bouncer_sends_once_and_never_leaks_the_failure_detail(tmp_path: Path) -> None:
    recorder = _Recorder()
    bouncer = make_bouncer(tmp_path, recorder)
    item = QueueItem(id="Q1", sender="alice@sender.test", recipients=[RecipientRoute("bob@example.test")],
                     verdicts=SPF_PASS)
    failed = [Delivery("forward-to-gmail", "private-target@gmail.com", ["bob@example.test"], status=FAILED,
                       last_error="HttpError 400 for private-target@gmail.com")]
    bouncer.bounce(item, failed, "reason")
    bouncer.bounce(item, failed, "reason")  # a second dead end (queue retry): no second DSN
    assert len(recorder.sent) == 1 and item.dsn
    raw, source, destination = recorder.sent[0]
    assert (source, destination) == ("mailer-daemon@example.test", "alice@sender.test")
    assert b"private-target" not in raw and b"5.0.0" in raw


def test_bouncer_sends_nothing_to_an_unauthenticated_sender(tmp_path: Path) -> None:
    recorder = _Recorder()
    item = QueueItem(id="Q2", sender="forged@victim.test", recipients=[RecipientRoute("bob@example.test")],
                     verdicts={"spf": {"result": "fail", "domain": "victim.test"}})
    make_bouncer(tmp_path, recorder).bounce(item, [Delivery("bounce", "", ["bob@example.test"], status=FAILED)], "r")
    assert recorder.sent == [] and item.dsn == ""


def test_failed_recipients_map_to_generic_statuses() -> None:
    found = failed_recipients([
        Delivery("bounce", "", ["a@e.test"]),
        Delivery("maildir", "x", ["b@e.test"], last_error="gave up after 432000s: disk full"),
        Delivery("forward-to-gmail", "t@gmail.com", ["a@e.test", "c@e.test"], last_error="HttpError 400"),
    ])
    assert [(r.address, r.status) for r in found] == [("a@e.test", "5.1.1"), ("b@e.test", "4.4.7"),
                                                      ("c@e.test", "5.0.0")]
