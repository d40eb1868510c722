"""The scanner clients against the real scanners (rspamd, spamd, clamd from Debian) on 127.0.0.1."""

from __future__ import annotations

import base64

import pytest

from sesmail_gateway.scan import CLEAN, VIRUS, Envelope, ScanError
from sesmail_gateway.scan.clamd import ClamdScanner
from sesmail_gateway.scan.rspamd import RspamdScanner
from sesmail_gateway.scan.spamd import SpamdScanner
from tests.conftest import free_port
from tests.scanners import GTUBE, VIRUS_NAME, VIRUS_PATTERN, ScannerProcess

ENVELOPE = Envelope(queue_id="T1", sender="alice@example.org", recipients=("bob@example.test",),
                    client_ip="127.0.0.1", helo="mail.example.org", client_name="mail.example.org",
                    auth={"spf": {"result": "pass"}, "dkim": [{"result": "pass", "domain": "example.org"}],
                          "dmarc": {"result": "pass", "from_domain": "example.org"}})


def message(body: bytes, subject: str = "Lunch") -> bytes:
    return (f"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.test>\r\nSubject: {subject}\r\n"
            "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m1@mail.example.org>\r\n\r\n").encode() + body


CLEAN_MESSAGE = message(b"Hi Bob, lunch tomorrow at noon?\r\n\r\nAlice\r\n")
GTUBE_MESSAGE = message(GTUBE + b"\r\n", subject="Test spam")


def infected(pattern: bytes = VIRUS_PATTERN) -> bytes:
    """A multipart message whose base64 attachment carries the test signature."""
    attachment = base64.b64encode(b"some bytes " + pattern + b" more bytes").decode()
    return ("From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: Invoice\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
            "--XX\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
            "--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
            f"Content-Disposition: attachment; filename=invoice.bin\r\n\r\n{attachment}\r\n--XX--\r\n").encode()


def test_rspamd_scores_gtube_at_its_reject_score_and_a_clean_message_low(rspamd_server: ScannerProcess) -> None:
    scanner = RspamdScanner(rspamd_server.address, timeout=10, hostname="mx.test")
    spam = scanner.scan(GTUBE_MESSAGE, ENVELOPE)
    assert spam.score is not None and spam.score >= 15
    assert "GTUBE" in spam.symbols
    clean = scanner.scan(CLEAN_MESSAGE, ENVELOPE)
    assert clean.result == CLEAN and clean.score is not None and clean.score < 6
    # Our verdicts reached rspamd's http_headers module, which scored them instead of checking again.
    assert {"R_SPF_ALLOW", "R_DKIM_ALLOW", "DMARC_POLICY_ALLOW"} <= set(clean.symbols)


def test_rspamd_is_told_a_failed_dmarc_verdict(rspamd_server: ScannerProcess) -> None:
    scanner = RspamdScanner(rspamd_server.address, timeout=10)
    failed = Envelope(**{**ENVELOPE.__dict__, "auth": {"spf": {"result": "fail"},
                                                       "dmarc": {"result": "fail", "disposition": "reject"}}})
    result = scanner.scan(CLEAN_MESSAGE, failed)
    assert {"R_SPF_FAIL", "DMARC_POLICY_REJECT"} <= set(result.symbols)


def test_spamd_scores_gtube_with_the_shipped_rules_and_a_clean_message_low(spamd_server: ScannerProcess) -> None:
    scanner = SpamdScanner(spamd_server.address, timeout=30)
    spam = scanner.scan(GTUBE_MESSAGE, ENVELOPE)
    assert spam.score is not None and spam.score >= 100
    assert "GTUBE" in spam.symbols
    clean = scanner.scan(CLEAN_MESSAGE, ENVELOPE)
    assert clean.score is not None and clean.score < 6
    assert "GTUBE" not in clean.symbols


def test_clamd_finds_the_test_signature_in_an_attachment_and_passes_a_clean_message(
        clamd_server: ScannerProcess) -> None:
    scanner = ClamdScanner(clamd_server.address, timeout=10)
    found = scanner.scan(infected(), ENVELOPE)
    assert (found.result, found.virus) == (VIRUS, VIRUS_NAME)
    assert scanner.scan(CLEAN_MESSAGE, ENVELOPE).result == CLEAN


def test_clamd_over_its_unix_socket(clamd_server: ScannerProcess) -> None:
    scanner = ClamdScanner(clamd_server.unix_socket, timeout=10)
    assert scanner.scan(infected(), ENVELOPE).virus == VIRUS_NAME


def test_clamd_streams_a_message_larger_than_one_chunk(clamd_server: ScannerProcess) -> None:
    filler = b"x" * 76 + b"\r\n"
    big = message(filler * 20000 + VIRUS_PATTERN + b"\r\n")  # ~1.5 MiB: many INSTREAM chunks
    result = ClamdScanner(clamd_server.address, timeout=10).scan(big, ENVELOPE)
    assert result.virus == VIRUS_NAME


@pytest.mark.parametrize("make", [
    lambda port: RspamdScanner(f"http://127.0.0.1:{port}", timeout=2),
    lambda port: SpamdScanner(f"127.0.0.1:{port}", timeout=2),
    lambda port: ClamdScanner(f"127.0.0.1:{port}", timeout=2),
], ids=["rspamd", "spamd", "clamd"])
def test_a_scanner_that_is_not_listening_raises_scan_error(make: object) -> None:
    scanner = make(free_port())  # type: ignore[operator]
    with pytest.raises(ScanError, match="ConnectionRefused"):
        scanner.scan(CLEAN_MESSAGE, ENVELOPE)


def test_a_paused_scanner_times_out_as_scan_error(own_clamd: ScannerProcess) -> None:
    own_clamd.pause()
    with pytest.raises(ScanError, match="timed out|TimeoutError"):
        ClamdScanner(own_clamd.address, timeout=1).scan(CLEAN_MESSAGE, ENVELOPE)
