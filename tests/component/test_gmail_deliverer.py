"""GmailDeliverer in-process against the local Gmail-speaking server (real google-api-python-client)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from sesmail_gateway.deliver.gmail import GmailDeliverer, TokenBucket
from sesmail_gateway.errors import TemporaryFailure, TokenExpired
from sesmail_gateway.message import Delivery, QueueItem, StoredMessage
from sesmail_gateway.tokens import ClientCredentials, StoredToken
from sesmail_gateway.tokens.file import FileTokenStore
from tests.gmailserver import GmailTestServer

ME = "me@gmail.test"


def deliverer(gmail: GmailTestServer, tmp_path: Path, labels: tuple[str, ...] = ("INBOX", "UNREAD"),
              *accounts: str) -> GmailDeliverer:
    store = FileTokenStore(tmp_path / "tokens")
    for account in accounts or (ME,):
        store.put(StoredToken(account, gmail.issue_refresh_token(account), time.time()))
    client = ClientCredentials.from_json(gmail.client_secret_json())
    return GmailDeliverer(store=store, client=lambda: client, label_ids=labels, api_endpoint=gmail.url,
                          token_uri=gmail.token_uri)


def message(tmp_path: Path, raw: bytes = b"Subject: t\r\n\r\nbody\r\n") -> StoredMessage:
    path = tmp_path / f"m{time.monotonic_ns()}.eml"
    path.write_bytes(raw)
    return StoredMessage.at(path)


def deliver(target: GmailDeliverer, msg: StoredMessage, *, quarantine: bool = False, account: str = ME) -> None:
    item = QueueItem(id="Q", sender="a@sender.test", recipients=[], quarantine=quarantine)
    target.deliver(item, Delivery("forward-to-gmail", account, ["bob@example.test"]), msg)


def test_quarantined_mail_gets_spam_instead_of_inbox(gmail: GmailTestServer, tmp_path: Path) -> None:
    target = deliverer(gmail, tmp_path)
    deliver(target, message(tmp_path), quarantine=True)
    deliver(target, message(tmp_path))
    assert [i.label_ids for i in gmail.imports_for(ME)] == [["UNREAD", "SPAM"], ["INBOX", "UNREAD"]]


def test_label_names_are_created_once_and_cached(gmail: GmailTestServer, tmp_path: Path) -> None:
    gmail.labels[ME] = [{"id": "Label_9", "name": "Existing", "type": "user"}]
    target = deliverer(gmail, tmp_path, ("INBOX", "Existing", "From gateway"))
    for _ in range(3):
        deliver(target, message(tmp_path))
    assert [i.label_ids for i in gmail.imports_for(ME)] == [["INBOX", "Label_9", "Label_2"]] * 3
    label_calls = [(m, p) for m, p, _ in gmail.requests if p.endswith("/labels")]
    assert label_calls == [("GET", "/gmail/v1/users/me/labels"), ("POST", "/gmail/v1/users/me/labels")]


def test_label_lookup_failure_defers_with_the_scope_hint(gmail: GmailTestServer, tmp_path: Path) -> None:
    target = deliverer(gmail, tmp_path, ("INBOX", "Work"))
    gmail.fail_next(ME, 403, "insufficientPermissions")
    with pytest.raises(TokenExpired):
        deliver(target, message(tmp_path))
    target.token_changed(ME)
    gmail.fail_next(ME, 500, "backendError")
    with pytest.raises(TemporaryFailure, match="gmail.labels scope"):
        deliver(target, message(tmp_path))
    assert not gmail.imports_for(ME)


def test_a_401_refreshes_the_access_token_once_and_retries(gmail: GmailTestServer, tmp_path: Path) -> None:
    target = deliverer(gmail, tmp_path)
    deliver(target, message(tmp_path))
    gmail.access_tokens.clear()  # Google forgot the access token (revoked session, key rotation)
    deliver(target, message(tmp_path))
    assert len(gmail.imports_for(ME)) == 2 and gmail.refresh_calls == 2


def test_one_access_token_serves_concurrent_deliveries(gmail: GmailTestServer, tmp_path: Path) -> None:
    target = deliverer(gmail, tmp_path)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            deliver(target, message(tmp_path))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(gmail.imports_for(ME)) == 8
    assert gmail.refresh_calls == 1


def test_a_dead_token_fails_fast_until_a_newer_one_is_stored(gmail: GmailTestServer, tmp_path: Path) -> None:
    target = deliverer(gmail, tmp_path)
    stored = target.store.get(ME)
    assert stored is not None
    gmail.revoke(stored.refresh_token)
    with pytest.raises(TokenExpired) as first:
        deliver(target, message(tmp_path))
    assert first.value.account == ME and first.value.issued_at == stored.issued_at
    calls = gmail.refresh_calls
    with pytest.raises(TokenExpired):
        deliver(target, message(tmp_path))
    assert gmail.refresh_calls == calls
    assert ME in target.dead_accounts()
    target.store.put(StoredToken(ME, gmail.issue_refresh_token(ME), time.time()))
    target.token_changed(ME)
    deliver(target, message(tmp_path))
    assert len(gmail.imports_for(ME)) == 1 and not target.dead_accounts()


def test_no_token_at_all_is_a_hold_that_names_the_command(gmail: GmailTestServer, tmp_path: Path) -> None:
    target = deliverer(gmail, tmp_path)
    with pytest.raises(TokenExpired, match="token refresh --account nobody@gmail.test"):
        deliver(target, message(tmp_path), account="nobody@gmail.test")


def test_token_bucket_keeps_the_per_user_quota() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(250.0, 250.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):  # a full second's quota is there at once
        assert bucket.take(25.0) == 0.0
    assert bucket.take(25.0) == pytest.approx(0.1)
    for _ in range(99):
        bucket.take(25.0)
    # 110 imports: 10 at once, then 10 a second.
    assert now[0] == pytest.approx(10.0)
