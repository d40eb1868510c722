"""Gmail delivery end to end: the real daemon over SMTP, importing into a local Gmail-speaking server.

Google's endpoints cannot be reached from here, so ``tests/gmailserver.py``
stands in for them over HTTPS; the gateway talks to it through the real
google-api-python-client and google-auth.
"""

from __future__ import annotations

import json
import os
import smtplib
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sesmail_gateway.tokens import StoredToken
from sesmail_gateway.tokens.file import FileTokenStore
from tests.conftest import Gateway, wait_for
from tests.gmailserver import CLIENT_SECRET, GmailTestServer

ME = "me@gmail.test"
YOU = "you@gmail.test"
MESSAGE = (b"From: Alice <alice@sender.test>\r\nTo: bob@example.test\r\nSubject: caf\xc3\xa9 \xe9\r\n"
           b"Date: Mon, 1 Jan 1990 00:00:00 +0000\r\nMessage-ID: <m1@sender.test>\r\n\r\n"
           b"8-bit body \xff\xfe and a line\r\n.with a leading dot\r\n")


class GmailGateway:
    """A gateway routed to Gmail accounts, with its token store at hand."""

    def __init__(self, gateway: Gateway, server: GmailTestServer) -> None:
        self.gateway = gateway
        self.server = server
        self.store = FileTokenStore(gateway.data_dir / "tokens")
        self.refresh_tokens: dict[str, str] = {}

    def grant(self, account: str, *, issued_at: float | None = None) -> str:
        token = self.server.issue_refresh_token(account)
        self.store.put(StoredToken(account, token, time.time() if issued_at is None else issued_at))
        self.refresh_tokens[account] = token
        return token

    def send(self, *recipients: str, body: bytes = MESSAGE) -> str:
        with smtplib.SMTP("127.0.0.1", self.gateway.port, timeout=60) as client:
            client.ehlo("client.sender.test")
            client.mail("alice@sender.test")
            for recipient in recipients:
                client.rcpt(recipient)
            code, reply = client.data(body)
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[-1]

    def queue(self, state: str) -> list[dict[str, Any]]:
        listing = json.loads(self.gateway.cli("queue", "list", "--state", state, "--json").stdout)
        assert isinstance(listing, list)
        return listing

    def archived(self, queue_id: str) -> bytes:
        return next((self.gateway.data_dir / "archive").rglob(f"{queue_id}.eml")).read_bytes()

    def settled(self) -> bool:
        counts = [len(self.queue(s)) for s in ("incoming", "active", "deferred")]
        return sum(counts) == 0


@pytest.fixture
def make_gmail_gateway(make_gateway: Callable[..., Gateway], gmail: GmailTestServer,
                       tmp_path: Path) -> Callable[..., GmailGateway]:
    def make(routes: dict[str, list[str]] | None = None, *, gmail_keys: dict[str, Any] | None = None,
             grant: tuple[str, ...] = (ME,), start: bool = True, **overrides: dict[str, Any]) -> GmailGateway:
        secrets_file = tmp_path / "client_secret.json"
        secrets_file.write_text(json.dumps(gmail.client_secret_json()))
        sections: dict[str, dict[str, Any]] = {
            "gmail": {"tokens": "file://tokens", "client_secrets": str(secrets_file), "api_endpoint": gmail.url,
                      "token_uri": gmail.token_uri, "token_poll_seconds": 3600, **(gmail_keys or {})},
        }
        sections.update(overrides)
        gateway = make_gateway(sections, start=False)
        for pattern, accounts in (routes or {"*@example.test": [ME]}).items():
            args: list[str] = []
            for account in accounts:
                args += ["--action", "forward-to-gmail", "--target", account]
            gateway.cli("routes", "add", pattern, *args)
        wrapped = GmailGateway(gateway, gmail)
        for account in grant:
            wrapped.grant(account)
        if start:
            gateway.start()
        return wrapped

    return make


def test_01_message_is_imported_once_with_its_bytes_labels_and_received_time(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer) -> None:
    gw = make_gmail_gateway()
    queue_id = gw.send("bob@example.test")
    wait_for(lambda: gmail.imports_for(ME), timeout=20)
    wait_for(gw.settled, timeout=20)
    imported = gmail.imports_for(ME)
    assert len(imported) == 1
    stored = gw.archived(queue_id)
    # Exactly the stored bytes: our headers on top, every byte the client sent below them.
    assert imported[0].raw == stored
    assert stored.endswith(MESSAGE) and stored.startswith(b"Authentication-Results: mx.test;")
    assert imported[0].label_ids == ["INBOX", "UNREAD"]
    assert imported[0].params["internalDateSource"] == "receivedTime"
    assert imported[0].upload == "multipart"
    delivered = gw.gateway.events("delivered")
    assert [(e["queue_id"], e["action"], e["target"]) for e in delivered] == [(queue_id, "forward-to-gmail", ME)]
    assert gmail.refresh_calls == 1


@pytest.mark.parametrize(("failures", "label"), [
    ([(429, "rateLimitExceeded", {"retry-after": "2"})] * 2, "429 twice"),
    ([(500, "backendError", {})], "500"),
    ([(403, "rateLimitExceeded", {})], "403 rateLimitExceeded"),
    ([(403, "userRateLimitExceeded", {})], "403 userRateLimitExceeded"),
])
def test_02_temporary_failures_are_retried_until_imported(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer,
        failures: list[tuple[int, str, dict[str, str]]], label: str) -> None:
    gw = make_gmail_gateway()
    for status, reason, headers in failures:
        gmail.fail_next(ME, status, reason, headers)
    queue_id = gw.send("bob@example.test")
    wait_for(lambda: gmail.imports_for(ME), timeout=30)
    wait_for(gw.settled, timeout=20)
    assert len(gmail.imports_for(ME)) == 1, label
    deferred = gw.gateway.events("deferred")
    assert len(deferred) == len(failures) and all(e["queue_id"] == queue_id for e in deferred)
    assert str(failures[0][0]) in deferred[0]["reason"]
    if "retry-after" in failures[0][2]:
        assert all(e["delay"] >= 1.9 for e in deferred)  # longer than the 1 s backoff: Retry-After wins
    assert not gw.queue("dead")


def test_03_a_permanent_refusal_is_a_dead_letter_with_googles_reason(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer) -> None:
    gw = make_gmail_gateway()
    gmail.fail_next(ME, 400, "invalidArgument")
    queue_id = gw.send("bob@example.test")
    dead = wait_for(lambda: gw.queue("dead"), timeout=20)
    assert [d["id"] for d in dead] == [queue_id]
    assert "Gmail API 400 invalidArgument" in dead[0]["reason"]
    assert not gmail.imports_for(ME)


def test_04_a_revoked_token_holds_mail_until_token_import_releases_it_without_restart(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer, tmp_path: Path) -> None:
    gw = make_gmail_gateway()
    gmail.revoke(gw.refresh_tokens[ME])
    first = gw.send("bob@example.test")
    second = gw.send("carol@example.test")
    held = wait_for(lambda: len(gw.queue("held")) == 2 and gw.queue("held"), timeout=20)
    assert {h["id"] for h in held} == {first, second}
    assert all("invalid_grant" in h["reason"] for h in held)
    status = json.loads(gw.gateway.cli("token", "status", "--json").stdout)
    assert [(s["account"], s["held"]) for s in status] == [(ME, 2)]
    assert "invalid_grant" in status[0]["last_error"]
    refresh_calls = gmail.refresh_calls
    # The account is marked: more mail for it is held without asking Google again.
    third = gw.send("dave@example.test")
    wait_for(lambda: any(h["id"] == third for h in gw.queue("held")), timeout=20)
    assert gmail.refresh_calls == refresh_calls

    fresh = tmp_path / "fresh-token.json"
    fresh.write_text(json.dumps({"refresh_token": gmail.issue_refresh_token(ME), "type": "authorized_user"}))
    result = gw.gateway.cli("token", "import", "--account", ME, "--refresh-token-file", str(fresh))
    assert "3 held message(s) released" in result.stdout
    wait_for(lambda: len(gmail.imports_for(ME)) == 3, timeout=20)
    wait_for(gw.settled, timeout=20)
    assert not gw.queue("held")
    # Released oldest first (deliveries then run side by side).
    assert [e["queue_id"] for e in gw.gateway.events("released")] == [first, second, third]
    assert sorted(e["queue_id"] for e in gw.gateway.events("delivered")) == sorted([first, second, third])
    assert_no_secrets(gw, gmail)


def test_05_the_poll_picks_up_a_newer_token_by_itself(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer) -> None:
    gw = make_gmail_gateway(gmail_keys={"token_poll_seconds": 1})
    gmail.revoke(gw.refresh_tokens[ME])
    queue_id = gw.send("bob@example.test")
    wait_for(lambda: gw.queue("held"), timeout=20)
    gw.grant(ME)  # written to the store directly, as another host or an operator's copy would
    wait_for(lambda: gmail.imports_for(ME), timeout=20)
    assert [e["queue_id"] for e in gw.gateway.events("released")] == [queue_id]


def test_06_two_accounts_have_independent_tokens(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer) -> None:
    gw = make_gmail_gateway({"alice@example.test": [ME], "bob@example.test": [YOU],
                             "both@example.test": [ME, YOU]}, grant=(ME, YOU))
    gmail.revoke(gw.refresh_tokens[ME])
    to_alice = gw.send("alice@example.test")
    to_bob = gw.send("bob@example.test")
    wait_for(lambda: gmail.imports_for(YOU), timeout=20)
    wait_for(lambda: [h["id"] for h in gw.queue("held")] == [to_alice], timeout=20)
    assert len(gmail.imports_for(YOU)) == 1 and not gmail.imports_for(ME)

    gw.grant(ME)
    gw.gateway.cli("token", "import", "--account", ME, "--refresh-token-file",
                   str(write_bare(gw.gateway.tmp, gmail.issue_refresh_token(ME))))
    wait_for(lambda: gmail.imports_for(ME), timeout=20)
    # One rule, two Gmail targets: each account gets the message with its own token.
    to_both = gw.send("both@example.test")
    wait_for(lambda: len(gmail.imports_for(ME)) == 2 and len(gmail.imports_for(YOU)) == 2, timeout=20)
    assert gw.archived(to_both) == gmail.imports_for(ME)[1].raw == gmail.imports_for(YOU)[1].raw
    assert gmail.imports_for(YOU)[0].raw == gw.archived(to_bob)


def test_07_kill_9_during_a_hold_loses_nothing_and_keeps_it_held(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer) -> None:
    gw = make_gmail_gateway()
    gmail.revoke(gw.refresh_tokens[ME])
    queue_id = gw.send("bob@example.test")
    wait_for(lambda: gw.queue("held"), timeout=20)
    gw.gateway.kill_all()
    gw.gateway.start()
    wait_for(lambda: gw.queue("held"), timeout=20)
    assert not gmail.imports_for(ME)
    # Restarted with the same dead token: still held.
    assert [h["id"] for h in gw.queue("held")] == [queue_id]
    gw.gateway.cli("token", "import", "--account", ME, "--refresh-token-file",
                   str(write_bare(gw.gateway.tmp, gmail.issue_refresh_token(ME))))
    wait_for(lambda: gmail.imports_for(ME), timeout=20)
    wait_for(gw.settled, timeout=20)
    assert len(gmail.imports_for(ME)) == 1


@pytest.mark.slow
def test_08_a_30_mib_message_goes_by_resumable_upload(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer) -> None:
    gw = make_gmail_gateway()
    line = bytes(range(32, 127)) + b"\xe9\r\n"
    body = MESSAGE + line * (30 * 1024 * 1024 // len(line))
    queue_id = gw.send("bob@example.test", body=body)
    wait_for(lambda: gmail.imports_for(ME), timeout=60)
    imported = gmail.imports_for(ME)[0]
    assert imported.upload == "resumable" and imported.chunks == 4  # 8 MiB chunks
    assert imported.label_ids == ["INBOX", "UNREAD"]
    assert imported.raw == gw.archived(queue_id)


def test_09_token_status_shows_expiry_and_the_daemon_exports_it(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer) -> None:
    gw = make_gmail_gateway(grant=(), gmail_keys={"refresh_token_lifetime": "7d", "token_poll_seconds": 1})
    gw.grant(ME, issued_at=time.time() - 7 * 86400 + 5 * 3600)  # 5 hours left
    gw.grant(YOU)
    status = {s["account"]: s for s in json.loads(gw.gateway.cli("token", "status", "--json").stdout)}
    assert 4.9 * 3600 < status[ME]["seconds_left"] <= 5 * 3600
    assert 7 * 86400 - 60 < status[YOU]["seconds_left"] <= 7 * 86400
    table = gw.gateway.cli("token", "status").stdout
    assert ME in table and ("5.0h" in table or "4.9h" in table)
    warning = wait_for(lambda: [line for line in gw.gateway.log().splitlines()
                                if "expires in" in line and ME in line], timeout=10)
    assert len(warning) == 1 and '"level":"warning"' in warning[0]
    metrics = wait_for(lambda: _metric_lines(gw.gateway, "sesmail_gmail_token_seconds_left"), timeout=10)
    assert any(f'account="{ME}"' in m for m in metrics) and any(f'account="{YOU}"' in m for m in metrics)


def test_10_token_delete_and_import_errors(make_gmail_gateway: Callable[..., GmailGateway],
                                           gmail: GmailTestServer, tmp_path: Path) -> None:
    gw = make_gmail_gateway(start=False)
    cli = gw.gateway.cli
    assert cli("token", "delete", "--account", ME).returncode == 0
    missing = cli("token", "delete", "--account", ME, check=False)
    assert missing.returncode == 1 and "no token stored" in missing.stderr
    revoked = gmail.issue_refresh_token(ME)
    gmail.revoke(revoked)
    refused = cli("token", "import", "--account", ME, "--refresh-token-file", str(write_bare(tmp_path, revoked)),
                  check=False)
    assert refused.returncode == 1 and "invalid_grant" in refused.stderr and "nothing stored" in refused.stderr
    assert revoked not in refused.stderr + refused.stdout
    junk = tmp_path / "junk.txt"
    junk.write_text("two words")
    bad = cli("token", "import", "--account", ME, "--refresh-token-file", str(junk), check=False)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert cli("token", "import", "--account", "not-an-address", "--refresh-token-file", str(junk),
               check=False).returncode == 1
    good = gmail.issue_refresh_token(ME)
    assert cli("token", "import", "--account", ME, "--refresh-token-file",
               str(write_bare(tmp_path, good))).returncode == 0
    token_file = gw.gateway.data_dir / "tokens" / f"{ME}.json"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    assert "no daemon running" in cli("token", "import", "--account", ME, "--refresh-token-file",
                                      str(write_bare(tmp_path, good))).stdout


def write_bare(folder: Path, token: str) -> Path:
    path = folder / f"token-{time.monotonic_ns()}.txt"
    path.write_text(token + "\n")
    return path


def _metric_lines(gateway: Gateway, name: str) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def assert_no_secrets(gw: GmailGateway, gmail: GmailTestServer) -> None:
    """No refresh token, access token, authorization code or client secret in any file but the token store."""
    secrets = set(gmail.refresh_tokens) | set(gmail.access_tokens) | set(gmail.codes) | {CLIENT_SECRET}
    assert secrets
    tokens_dir = gw.gateway.data_dir / "tokens"
    checked = 0
    files = [gw.gateway.log_path, gw.gateway.config]
    for root, _, names in os.walk(gw.gateway.data_dir):
        files += [Path(root) / name for name in names]
    for path in files:
        if tokens_dir not in path.parents:
            try:
                data = path.read_bytes()
            except OSError:  # a socket
                continue
            checked += 1
            for secret in secrets:
                assert secret.encode() not in data, f"a secret is in {path}"
    assert checked > 5


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_refresh(gw: GmailGateway, port: int) -> Any:
    import subprocess
    import sys

    from tests.conftest import ROOT

    return subprocess.Popen(
        [sys.executable, "-m", "sesmail_gateway", "token", "refresh", "--account", ME, "--no-browser",
         "--port", str(port), "--timeout", "60", "--config", str(gw.gateway.config)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )


def _consent(proc: Any, gmail: GmailTestServer) -> str:
    """Read the printed address, 'open' it as a browser would; returns where Google redirected."""
    import ssl
    import urllib.request

    url = ""
    while not url:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        if line.strip().startswith("https://"):
            url = line.strip()
    context = ssl.create_default_context(cafile=str(gmail.cert))

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), NoRedirect)
    try:
        opener.open(url, timeout=10)
    except urllib.error.HTTPError as redirect:
        return str(redirect.headers["location"])
    raise AssertionError("the consent page did not redirect")


@pytest.mark.parametrize("answer_by", ["redirect to the local port", "pasted address"])
def test_11_token_refresh_no_browser_stores_a_token_that_delivers(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer, answer_by: str) -> None:
    import urllib.request

    gw = make_gmail_gateway(grant=(), start=False)  # started once the token is stored
    port = _free_port()
    proc = _start_refresh(gw, port)
    location = _consent(proc, gmail)
    assert location.startswith(f"http://localhost:{port}/?code=")
    if answer_by == "pasted address":
        proc.stdin.write(location + "\n")
        proc.stdin.flush()
    else:
        urllib.request.urlopen(location.replace("localhost", "127.0.0.1"), timeout=10).read()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stored a new refresh token for me@gmail.test" in out
    consent = gmail.consents[0]
    assert consent["scope"] == "https://www.googleapis.com/auth/gmail.insert"
    assert consent["access_type"] == "offline" and consent["prompt"] == "consent"
    assert consent["code_challenge_method"] == "S256" and consent["login_hint"] == ME
    stored = gw.store.get(ME)
    assert stored is not None and stored.refresh_token in gmail.refresh_tokens
    assert stored.refresh_token not in out + err
    # The daemon delivers with it.
    gw.gateway.start()
    gw.send("bob@example.test")
    wait_for(lambda: gmail.imports_for("consented@gmail.test") or gmail.imports_for(ME), timeout=20)
    assert_no_secrets(gw, gmail)


def test_12_token_refresh_explains_the_classic_failures(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer, tmp_path: Path) -> None:
    import socket

    gw = make_gmail_gateway(grant=(), start=False)
    # The port is taken.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        result = gw.gateway.cli("token", "refresh", "--account", ME, "--no-browser", "--port", str(taken),
                                check=False)
    assert result.returncode == 1 and f"port {taken} is already in use" in result.stderr
    # Google returns no refresh token (consent granted before).
    gmail.omit_refresh_token = True
    proc = _start_refresh(gw, _free_port())
    proc.stdin.write(_consent(proc, gmail) + "\n")
    proc.stdin.flush()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "no refresh token" in err and "prompt=consent" in err
    assert gw.store.get(ME) is None
    # A "web" client without our redirect address registered: refused before anything starts.
    web = tmp_path / "web_client.json"
    web.write_text(json.dumps({"web": {**gmail.client_secret_json()["installed"],
                                       "redirect_uris": ["https://example.test/callback"]}}))
    config = gw.gateway.config.read_text().replace(str(tmp_path / "client_secret.json"), str(web))
    gw.gateway.config.write_text(config)
    result = gw.gateway.cli("token", "refresh", "--account", ME, "--no-browser", "--port", "8089", check=False)
    assert result.returncode == 1 and "Authorized redirect URIs" in result.stderr
    assert "http://localhost:8089/" in result.stderr


def healthz(gateway: Gateway) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_13_an_import_that_never_answers_makes_healthz_fail_until_it_ends(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer) -> None:
    """What lets systemd's watchdog restart a daemon whose delivery is stuck (delivery.hang_timeout)."""
    gw = make_gmail_gateway(delivery={"hang_timeout": 1})
    assert healthz(gw.gateway)[0] == 200
    gmail.stall_imports()
    try:
        queue_id = gw.send("bob@example.test")
        wait_for(lambda: gmail.stalled == 1, timeout=20)
        status, text = wait_for(lambda: (answer := healthz(gw.gateway))[0] == 503 and answer, timeout=20)
        assert text.startswith(f"unhealthy: delivery of {queue_id} hung for")
        assert gw.gateway.log().count("taken as hung") == 1  # one line, however often /healthz asks
    finally:
        gmail.release_imports()
    wait_for(lambda: gmail.imports_for(ME), timeout=20)
    wait_for(lambda: healthz(gw.gateway)[0] == 200, timeout=20)
    wait_for(gw.settled, timeout=20)


def test_16_local_deliveries_go_on_while_a_gmail_import_hangs(
        make_gmail_gateway: Callable[..., GmailGateway], gmail: GmailTestServer) -> None:
    """Local deliveries (Maildir, folder archive) share one thread; an import that never answers
    holds a thread of the remote pool, never that one."""
    gw = make_gmail_gateway({"bob@example.test": [ME]}, start=False)
    maildir = gw.gateway.data_dir / "alice"
    gw.gateway.cli("routes", "add", "alice@example.test", "--action", "maildir", "--target", str(maildir))
    gw.gateway.start()
    gmail.stall_imports()
    try:
        gw.send("bob@example.test")
        wait_for(lambda: gmail.stalled == 1, timeout=20)
        for _ in range(6):
            gw.send("alice@example.test")
        assert len(gw.gateway.wait_delivered(6, maildir)) == 6
        assert not gmail.imports_for(ME)
    finally:
        gmail.release_imports()
    wait_for(lambda: gmail.imports_for(ME), timeout=20)
    wait_for(gw.settled, timeout=20)
