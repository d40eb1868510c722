"""The spam label is a Gmail label: a message rspamd scores as spam, on a route that labels
instead of refusing, reaches the local Gmail-speaking test server labelled SPAM, not INBOX."""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Callable
from pathlib import Path

from sesmail_gateway.tokens import StoredToken
from sesmail_gateway.tokens.file import FileTokenStore
from tests.conftest import Gateway, wait_for
from tests.gmailserver import GmailTestServer
from tests.scan.test_scan_clients import CLEAN_MESSAGE, GTUBE_MESSAGE
from tests.scanners import ScannerProcess

ME = "me@gmail.test"


def send(gw: Gateway, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as client:
        client.ehlo("client.example.org")
        client.mail("alice@example.org")
        client.rcpt("bob@example.test")
        code, reply = client.data(data)
    assert code == 250, reply


def test_spam_labelled_by_policy_is_imported_with_the_gmail_spam_label(
        make_gateway: Callable[..., Gateway], gmail: GmailTestServer, rspamd_server: ScannerProcess,
        tmp_path: Path) -> None:
    secrets = tmp_path / "client_secret.json"
    secrets.write_text(json.dumps(gmail.client_secret_json()))
    gw = make_gateway({
        "gmail": {"tokens": "file://tokens", "client_secrets": str(secrets), "api_endpoint": gmail.url,
                  "token_uri": gmail.token_uri, "token_poll_seconds": 3600},
        "scan": {"rspamd_url": rspamd_server.address},
    }, start=False)
    gw.cli("routes", "add", "*@example.test", "--action", "forward-to-gmail", "--target", ME, "--spam", "label")
    FileTokenStore(gw.data_dir / "tokens").put(StoredToken(ME, gmail.issue_refresh_token(ME), time.time()))
    gw.start()

    send(gw, GTUBE_MESSAGE)
    send(gw, CLEAN_MESSAGE)
    imported = wait_for(lambda: len(found := gmail.imports_for(ME)) == 2 and found, timeout=30)
    by_subject = {b"Test spam" in i.raw: i for i in imported}
    assert "SPAM" in by_subject[True].label_ids and "INBOX" not in by_subject[True].label_ids
    assert b"X-Spam-Status: Yes, score=15" in by_subject[True].raw
    assert by_subject[False].label_ids == ["INBOX", "UNREAD"]
