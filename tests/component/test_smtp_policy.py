"""RCPT policy and acceptance over real SMTP against the real daemon.

Each test starts the gateway as a subprocess (tests/conftest.py), talks to
it with smtplib or a raw socket, and looks at what an operator would see:
the replies, the Maildir, the archive folder and the mail-event log.
"""

from __future__ import annotations

import json
import re
import smtplib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Gateway, parse, wait_for

from tests.helpers import RawSMTP

QUEUED = re.compile(r"2\.0\.0 Ok: queued as ([0-9A-Za-z]+)")
NO_CACHE = {"rules": {"cache_seconds": 0}}


def queue_id(message: bytes | str) -> str:
    text = message.decode() if isinstance(message, bytes) else message
    match = QUEUED.fullmatch(text)
    assert match, f"not a queued reply: {text!r}"
    return match.group(1)


def send(gw: Gateway, recipients: list[str], body: bytes = b"From: s@elsewhere.test\r\nSubject: t\r\n\r\nbody\r\n",
         sender: str = "sender@elsewhere.test") -> str:
    """One message over smtplib; every recipient must be accepted; returns the queue id."""
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as client:
        assert client.ehlo()[0] == 250
        assert client.mail(sender) == (250, b"2.1.0 Sender ok")
        for recipient in recipients:
            assert client.rcpt(recipient) == (250, b"2.1.5 Recipient ok")
        code, text = client.data(body)
        assert code == 250
        return queue_id(text)


def rcpt_reply(gw: Gateway, recipient: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        assert client.mail("sender@elsewhere.test")[0] == 250
        return client.rcpt(recipient)


def with_routes(make_gateway: Callable[..., Gateway], routes: list[list[str]],
                overrides: dict[str, dict[str, Any]] | None = None) -> Gateway:
    """A gateway whose rule table holds exactly ``routes`` (no seeded catch-all)."""
    gw = make_gateway(overrides, start=False)
    for route in routes:
        gw.cli("routes", "add", *route)
    return gw.start()


# --- acceptance ---------------------------------------------------------------------


def test_delivered_message_is_received_header_plus_the_exact_bytes_sent(
    make_gateway: Callable[..., Gateway],
) -> None:
    gw = make_gateway()
    # On the wire: dot-stuffed lines, 8-bit and invalid UTF-8 bytes, a NUL, trailing blanks.
    original = (
        b"From: Sender <sender@elsewhere.test>\r\n"
        b"To: alice@example.test\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
        b"X-Raw: \xe9t\xe9 \xff\xfe\r\n"
        b"\r\n"
        b".leading dot line\r\n"
        b".\r\n"
        b"..two dots\r\n"
        b"invalid utf-8: \xc3\x28 \xa0\xa1 and \x00 nul  \r\n"
    )
    stuffed = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in original.split(b"\r\n"))
    raw = RawSMTP(gw.port)
    try:
        assert raw.coded_reply()[0] == 220
        assert raw.coded_command(b"EHLO client.example")[0] == 250
        assert raw.coded_command(b"MAIL FROM:<sender@elsewhere.test> BODY=8BITMIME") == (250, "2.1.0 Sender ok")
        assert raw.coded_command(b"RCPT TO:<alice@example.test>") == (250, "2.1.5 Recipient ok")
        assert raw.coded_command(b"DATA") == (354, "End data with <CR><LF>.<CR><LF>")
        raw.sock.sendall(stuffed + b".\r\n")
        code, text = raw.coded_reply()
        assert code == 250
        qid = queue_id(text)
        assert raw.coded_command(b"QUIT") == (221, "Bye")
    finally:
        raw.close()

    [delivered] = gw.wait_delivered(1)
    received = re.compile(
        # Our Authentication-Results (verdicts for a sender domain without records), then Received.
        rb"Authentication-Results: mx\.test;\r\n\tspf=none smtp\.mailfrom=elsewhere\.test;\r\n"
        rb"\tdkim=none;\r\n\tdmarc=none header\.from=elsewhere\.test\r\n"
        rb"Received: from client\.example \(unknown \[127\.0\.0\.1\]\)\r\n"
        rb"\tby mx\.test \(sesmail-gateway\) with ESMTP id " + qid.encode() + rb"\r\n"
        rb"\tfor <alice@example\.test>; [A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000\r\n"
    )
    match = received.match(delivered)
    assert match, delivered[:300]
    assert delivered[match.end():] == original
    assert parse(delivered)["Received"].startswith("from client.example (unknown [127.0.0.1])")

    # The archive copy is the same bytes, filed by the UTC day of reception.
    [event] = [e for e in gw.events("received") if e.get("queue_id") == qid]
    day = time.strftime("%Y-%m-%d", time.gmtime(event["ts"]))
    archived = gw.data_dir / "archive" / day / f"{qid}.eml"
    wait_for(archived.exists)
    assert archived.read_bytes() == delivered


def test_accepted_message_logs_received_queued_and_delivered_with_one_queue_id(
    make_gateway: Callable[..., Gateway],
) -> None:
    gw = make_gateway()
    qid = send(gw, ["alice@example.test", "Bob@EXAMPLE.test"])
    gw.wait_delivered(1)
    wait_for(lambda: gw.events("delivered"))
    received, queued, delivered = gw.events("received"), gw.events("queued"), gw.events("delivered")
    assert [e["queue_id"] for e in received] == [qid]
    assert [e["queue_id"] for e in queued] == [qid]
    assert [e["queue_id"] for e in delivered] == [qid]
    assert received[0]["client"] == "127.0.0.1"
    assert received[0]["helo"] == "client.test"
    assert queued[0]["sender"] == "sender@elsewhere.test"
    assert queued[0]["recipients"] == ["alice@example.test", "Bob@EXAMPLE.test"]
    assert delivered[0]["action"] == "maildir"
    assert delivered[0]["target"] == "mail"
    # In order: received before queued before delivered.
    assert received[0]["ts"] <= queued[0]["ts"] <= delivered[0]["ts"]
    assert not gw.events("rejected")


def test_null_sender_is_accepted(make_gateway: Callable[..., Gateway]) -> None:
    """Bounces and DSNs come from MAIL FROM:<> and must reach the user."""
    gw = make_gateway()
    qid = send(gw, ["alice@example.test"], sender="<>",
               body=b"From: s@elsewhere.test\r\nSubject: Undelivered Mail Returned to Sender\r\n\r\nbounce\r\n")
    [delivered] = gw.wait_delivered(1)
    assert f"with ESMTP id {qid}".encode() in delivered
    [queued] = gw.events("queued")
    assert queued["queue_id"] == qid
    assert queued["sender"] == ""  # the null sender, not the literal "<>"


# --- RCPT refusals --------------------------------------------------------------------


def test_foreign_domain_is_refused_550_571_and_logged(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        assert client.mail("sender@elsewhere.test")[0] == 250
        code, text = client.rcpt("victim@relay.test")
        assert (code, text[:6]) == (550, b"5.7.1 ")
        # A subdomain of an accepted domain is another domain.
        assert client.rcpt("x@sub.example.test")[0] == 550
        # Without an accepted recipient there is no transaction.
        assert client.docmd("DATA")[0] == 503
    rejected = gw.events("rejected")
    assert [e.get("recipient") for e in rejected] == ["victim@relay.test", "x@sub.example.test", None]
    assert (rejected[2]["stage"], rejected[2]["reply"][:3]) == ("data", "503")  # every refusal, one line
    first = rejected[0]
    assert first["stage"] == "rcpt"
    assert first["reply"].startswith("550 5.7.1 ")
    assert first["client"] == "127.0.0.1"
    assert first["sender"] == "sender@elsewhere.test"
    assert "queue_id" not in first
    assert not gw.events("queued")


def test_address_without_a_rule_is_refused_550_511(make_gateway: Callable[..., Gateway]) -> None:
    gw = with_routes(make_gateway, [["alice@example.test", "--action", "maildir", "--target", "mail"]])
    code, text = rcpt_reply(gw, "bob@example.test")
    assert (code, text[:6]) == (550, b"5.1.1 ")
    assert rcpt_reply(gw, "alice@example.test") == (250, b"2.1.5 Recipient ok")
    [rejected] = gw.events("rejected")
    assert rejected["recipient"] == "bob@example.test"
    assert rejected["reply"].startswith("550 5.1.1 ")


def test_bounce_rule_with_reject_mode_is_refused_550_511(make_gateway: Callable[..., Gateway]) -> None:
    gw = with_routes(make_gateway, [
        ["*", "--action", "bounce"],
        ["kept@example.test", "--action", "maildir", "--target", "mail"],
    ])
    code, text = rcpt_reply(gw, "gone@example.test")
    assert (code, text[:6]) == (550, b"5.1.1 ")
    assert rcpt_reply(gw, "kept@example.test") == (250, b"2.1.5 Recipient ok")


def test_rule_with_an_unknown_action_answers_451_430(make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    gw = make_gateway(start=False)
    gw.cli("routes", "add", "odd@example.test", "--action", "maildir", "--target", "mail")
    # A record written by a newer tool: the action type is one this gateway does not know.
    exported = json.loads(gw.cli("routes", "export").stdout)
    for item in exported["Items"]:
        item["action"] = {"S": "frobnicate"}
        item["actions"]["L"][0]["M"]["type"] = {"S": "frobnicate"}
    scan = tmp_path / "scan.json"
    scan.write_text(json.dumps(exported))
    gw.cli("routes", "import", str(scan))
    gw.start()
    code, text = rcpt_reply(gw, "odd@example.test")
    assert (code, text[:6]) == (451, b"4.3.0 ")
    assert b"frobnicate" not in text  # detail goes to the log, not to the client
    assert "frobnicate" in gw.log()
    [rejected] = gw.events("rejected")
    assert rejected["reply"].startswith("451 4.3.0 ")


def test_unreachable_rule_store_answers_451_430(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(NO_CACHE)
    assert rcpt_reply(gw, "alice@example.test") == (250, b"2.1.5 Recipient ok")
    db = gw.data_dir / "rules.db"
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    db.write_bytes(b"this is not an SQLite database\x00" * 200)
    code, text = rcpt_reply(gw, "alice@example.test")
    assert (code, text[:6]) == (451, b"4.3.0 ")
    # The same answer when the file is gone altogether: never "no such user".
    db.unlink()
    code, text = rcpt_reply(gw, "alice@example.test")
    assert (code, text[:6]) == (451, b"4.3.0 ")
    assert gw.proc is not None and gw.proc.poll() is None


def test_recipients_over_the_limit_get_452_453(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway({"smtp": {"max_recipients": 3}})
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        client.mail("sender@elsewhere.test")
        for n in range(3):
            assert client.rcpt(f"user{n}@example.test") == (250, b"2.1.5 Recipient ok")
        code, text = client.rcpt("user3@example.test")
        assert (code, text[:6]) == (452, b"4.5.3 ")
        code, text = client.data(b"From: s@elsewhere.test\r\nSubject: many\r\n\r\nbody\r\n")
        assert code == 250
        qid = queue_id(text)
        # The limit is per transaction: the next one starts from zero.
        client.mail("sender@elsewhere.test")
        assert client.rcpt("user3@example.test") == (250, b"2.1.5 Recipient ok")
        client.rset()
    [queued] = gw.events("queued")
    assert queued["queue_id"] == qid
    assert queued["recipients"] == ["user0@example.test", "user1@example.test", "user2@example.test"]


def test_only_accepted_recipients_of_a_mixed_list_get_the_message(
    make_gateway: Callable[..., Gateway],
) -> None:
    gw = with_routes(make_gateway, [
        ["alice@example.test", "--action", "maildir", "--target", "alice"],
        ["carol@localhost", "--action", "maildir", "--target", "carol"],
        ["gone@example.test", "--action", "bounce"],
    ])
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        client.mail("sender@elsewhere.test")
        assert client.rcpt("alice@example.test")[0] == 250
        assert client.rcpt("outsider@relay.test")[0] == 550
        assert client.rcpt("bob@example.test")[0] == 550
        assert client.rcpt("gone@example.test")[0] == 550
        assert client.rcpt("carol@localhost")[0] == 250
        code, text = client.data(b"From: s@elsewhere.test\r\nSubject: mixed\r\n\r\nbody\r\n")
        assert code == 250
        qid = queue_id(text)
    assert len(gw.wait_delivered(1, gw.data_dir / "alice")) == 1
    assert len(gw.wait_delivered(1, gw.data_dir / "carol")) == 1
    [queued] = gw.events("queued")
    assert queued["queue_id"] == qid
    assert queued["recipients"] == ["alice@example.test", "carol@localhost"]
    assert [e["recipient"] for e in gw.events("rejected")] == [
        "outsider@relay.test", "bob@example.test", "gone@example.test",
    ]
    # Nothing went anywhere else: no catch-all Maildir, no other folder.
    assert sorted(p.name for p in gw.data_dir.iterdir() if (p / "new").is_dir()) == ["alice", "carol"]


def scan_item(pattern: str, target: str, *, enabled: bool = True, old_layout: bool = False) -> dict[str, Any]:
    """A route record as `aws dynamodb scan` prints it, in the old or the new action layout."""
    item: dict[str, Any] = {
        "PK": {"S": f"ROUTE#{pattern}"}, "SK": {"S": "RULE#v1"}, "entity_type": {"S": "ROUTE"},
        "recipient": {"S": pattern}, "enabled": {"BOOL": enabled},
    }
    if old_layout:
        item.update(action={"S": "maildir"}, target={"S": target})
    else:
        item["actions"] = {"L": [{"M": {"type": {"S": "maildir"}, "target": {"S": target}}}]}
    return item


def test_route_hierarchy_exact_then_plus_stripped_then_domain_then_catch_all(
    make_gateway: Callable[..., Gateway], tmp_path: Path,
) -> None:
    gw = make_gateway(start=False)
    items = [
        scan_item("user+tag@example.test", "exact"),
        scan_item("user@example.test", "plus", old_layout=True),
        scan_item("*@example.test", "domain"),
        scan_item("*", "all", old_layout=True),
        scan_item("off@example.test", "disabled", enabled=False),
        scan_item("user@localhost", "disabled", enabled=False, old_layout=True),
    ]
    scan = tmp_path / "scan.json"
    scan.write_text(json.dumps({"Items": items, "Count": len(items), "ScannedCount": len(items)}))
    gw.cli("routes", "import", str(scan))
    gw.start()
    expected = {
        "USER+TAG@Example.Test": "exact",     # exact, compared case-insensitively
        "user+other@example.test": "plus",    # tag removed
        "User@EXAMPLE.TEST": "plus",          # no tag at all
        "off@example.test": "domain",         # its own rule is disabled
        "someone@example.test": "domain",
        "user+x@localhost": "all",            # plus-stripped rule disabled, no domain rule
    }
    for recipient in expected:
        send(gw, [recipient], body=f"Subject: {recipient}\r\n\r\nbody\r\n".encode())
    for folder in set(expected.values()):
        want = sorted(r for r, f in expected.items() if f == folder)
        got = gw.wait_delivered(len(want), gw.data_dir / folder)
        assert sorted(parse(m)["Subject"] for m in got) == want
    assert not (gw.data_dir / "disabled").exists()


def test_client_text_cannot_forge_headers_above_the_message(make_gateway: Callable[..., Gateway]) -> None:
    """A bare CR in HELO or in a quoted local part must not start a header of its own."""
    gw = make_gateway()
    raw = RawSMTP(gw.port)
    try:
        raw.coded_reply()
        assert raw.coded_command(b"EHLO evil\rAuthentication-Results: mx.test; dkim=pass")[0] == 250
        assert raw.coded_command(b"MAIL FROM:<sender@elsewhere.test>")[0] == 250
        # RFC 5321 4.1.2: no control character in a quoted local part; refused as bad syntax.
        assert raw.coded_command(b'RCPT TO:<"x\rX-Forged:1"@example.test>') == (501, "5.1.3 Bad recipient address syntax")
        assert raw.coded_command(b"RCPT TO:<alice@example.test>") == (250, "2.1.5 Recipient ok")
        assert raw.coded_command(b"DATA")[0] == 354
        raw.sock.sendall(b"From: s@elsewhere.test\r\nSubject: plain\r\n\r\nbody\r\n.\r\n")
        assert raw.coded_reply()[0] == 250
    finally:
        raw.close()
    [delivered] = gw.wait_delivered(1)
    header, _, rest = delivered.partition(b"From: s@elsewhere.test\r\nSubject: plain\r\n")
    assert rest == b"\r\nbody\r\n"
    assert b"\r" not in header.replace(b"\r\n", b"")
    assert parse(delivered).keys() == ["Authentication-Results", "Received", "From", "Subject"]
