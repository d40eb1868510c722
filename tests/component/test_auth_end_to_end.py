"""Email authentication end to end: real SMTP into a real daemon,
whose checks ask a real DNS server on 127.0.0.1 holding the test zones, with
messages DKIM-signed at test time. Each scenario follows the message to where
it ends: the Maildir (or its ``.Junk`` folder), the ``rejected`` area and the
``queue`` commands, the mail-event log and ``/metrics``.

The client is always 127.0.0.1, so ``ip4:127.0.0.1`` makes SPF pass and a
record without it (ending ``-all``) makes SPF fail.
"""

from __future__ import annotations

import json
import re
import shutil
import smtplib
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import authres

from sesmail_gateway import journal
from tests.checks_fixtures import make_message, rsa_signer
from tests.conftest import Gateway, wait_for

AUTHSERV_ID = "mx.test"
RCPT = "bob@example.test"
SPF_PASS = "v=spf1 ip4:127.0.0.1 -all"
SPF_FAIL = "v=spf1 ip4:192.0.2.1 -all"
ENFORCE = {"checks": {"dmarc": "enforce"}}

MakeGateway = Callable[..., Gateway]

# -- helpers -----------------------------------------------------------------------------------


def send(gw: Gateway, message: bytes, mail_from: str, rcpt: str = RCPT,
         helo: str = "client.example.org") -> tuple[int, str]:
    """One transaction over real SMTP; the reply to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as client:
        client.ehlo(helo)
        code, reply = client.mail(mail_from)
        assert code == 250, reply
        code, reply = client.rcpt(rcpt)
        assert code == 250, reply
        code, reply = client.data(message)
        return code, reply.decode()


def queue_id_of(reply: str) -> str:
    match = re.search(r"queued as (\S+)", reply)
    assert match, f"no queue id in {reply!r}"
    return match.group(1)


def header_block(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    assert end >= 0, "no end of header block"
    return raw[:end + 2]


def fields(block: bytes) -> list[bytes]:
    """The header fields of a CRLF header block, each with its folding and line end."""
    return [f for f in re.split(rb"(?<=\r\n)(?![ \t])", block) if f]


def field_name(field: bytes) -> str:
    return field.split(b":", 1)[0].decode().strip().lower()


def authserv_id(field: bytes) -> str:
    value = field.split(b":", 1)[1].decode()
    return re.split(r"[\s;]", value.strip(), maxsplit=1)[0].lower()


def our_results(raw: bytes) -> list[bytes]:
    """Every Authentication-Results field of our authserv-id in the delivered header block."""
    return [f for f in fields(header_block(raw))
            if field_name(f) == "authentication-results" and authserv_id(f) == AUTHSERV_ID]


def parse_results(field: bytes) -> dict[str, authres.core.AuthenticationResult]:
    """Our Authentication-Results parsed by the ``authres`` package: method -> result."""
    header = authres.AuthenticationResultsHeader.parse(
        re.sub(r"\r\n[ \t]", " ", field.decode("ascii")).strip())
    assert header.authserv_id == AUTHSERV_ID
    return {r.method: r for r in header.results}


def prop(result: authres.core.AuthenticationResult, ptype: str, name: str) -> str | None:
    return next((p.value for p in result.properties if p.type == ptype and p.name == name), None)


def split_delivered(raw: bytes, original: bytes) -> list[bytes]:
    """The fields the gateway prepended to ``original``, which must follow byte-identical."""
    assert raw.endswith(original), "the original bytes do not follow the gateway's headers unchanged"
    return fields(raw[:len(raw) - len(original)])


def rejected_items(gw: Gateway) -> list[dict[str, Any]]:
    return list(json.loads(gw.cli("queue", "list", "--state", "rejected", "--json").stdout))


def wait_rejected(gw: Gateway, count: int = 1) -> list[dict[str, Any]]:
    """The rejected area as ``queue list`` shows it (its folders are written just after the reply)."""
    return list(wait_for(lambda: (items := rejected_items(gw)) and len(items) >= count and items, timeout=10))


def metric(gw: Gateway, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{wanted}}} not in /metrics")


def nothing_delivered(gw: Gateway) -> bool:
    """Nothing but a probe sent now reached a mailbox. Waiting for the probe's delivery stands in
    for "long enough": the runner has taken up everything queued before it."""
    probes = gw.data_dir / "probes"
    gw.cli("routes", "add", "probe@example.test", "--action", "maildir", "--target", "probes")
    probe = make_message(from_="Probe <probe@probe.test>", to="probe@example.test", subject="probe")
    code, reply = send(gw, probe, "probe@probe.test", rcpt="probe@example.test")
    assert code == 250, reply
    gw.wait_delivered(len(gw.delivered(probes)) + 1, probes)
    return not gw.delivered() and not gw.delivered(gw.maildir / ".Junk")


def publish_author(gw: Gateway, domain: str, *, spf: str, dmarc: str | None) -> None:
    gw.dns.add(domain, "TXT", spf)
    if dmarc is not None:
        gw.dns.add(f"_dmarc.{domain}", "TXT", dmarc)


# -- 1. everything passes ------------------------------------------------------------------------


def test_01_signed_aligned_message_is_delivered_with_one_authentication_results(
        make_gateway: MakeGateway) -> None:
    gw = make_gateway(ENFORCE)
    publish_author(gw, "example.org", spf=SPF_PASS, dmarc="v=DMARC1; p=reject")
    signer = rsa_signer("example.org", "s2024")
    signer.publish(gw.dns)
    signed = signer.sign(make_message(to=RCPT, body=b"Signed body.\r\n\r\n"))

    code, reply = send(gw, signed, "bounce@example.org")

    assert code == 250, reply
    queue_id = queue_id_of(reply)
    raw = gw.wait_delivered(1)[0]
    prepended = split_delivered(raw, signed)
    assert [field_name(f) for f in prepended] == ["authentication-results", "received"]
    assert prepended[0].startswith(b"Authentication-Results: mx.test;")
    assert f" id {queue_id}".encode() in prepended[1]
    assert our_results(raw) == [prepended[0]]

    results = parse_results(prepended[0])
    assert results["spf"].result == "pass"
    assert prop(results["spf"], "smtp", "mailfrom") == "example.org"
    assert results["dkim"].result == "pass"
    assert prop(results["dkim"], "header", "d") == "example.org"
    assert prop(results["dkim"], "header", "s") == "s2024"
    assert results["dmarc"].result == "pass"
    assert prop(results["dmarc"], "header", "from") == "example.org"
    assert "arc" not in results

    queued = [e for e in gw.events("queued") if e["queue_id"] == queue_id]
    assert len(queued) == 1
    assert queued[0]["auth"] == {"spf": "pass", "dkim": "pass", "arc": "none", "dmarc": "pass"}
    assert not queued[0].get("quarantine")

    wait_for(lambda: metric(gw, "sesmail_auth_results_total", method="dkim", result="pass") >= 1)
    assert metric(gw, "sesmail_auth_results_total", method="dmarc", result="pass") == 1
    assert metric(gw, "sesmail_auth_results_total", method="spf", result="pass") == 1


# -- 2. DMARC p=reject under enforce: refused, kept, released --------------------------------------


def spoofed(domain: str = "example.org", **kwargs: str) -> bytes:
    return make_message(from_=f"CEO <ceo@{domain}>", to=RCPT, subject="Wire transfer", **kwargs)


def test_02_dmarc_reject_is_refused_kept_and_released_by_the_operator(make_gateway: MakeGateway) -> None:
    gw = make_gateway(ENFORCE)
    publish_author(gw, "example.org", spf=SPF_FAIL, dmarc="v=DMARC1; p=reject")
    message = spoofed()

    code, reply = send(gw, message, "ceo@example.org")

    assert code == 550, reply
    assert reply.startswith("5.7.1"), reply
    items = wait_rejected(gw)
    assert len(items) == 1
    item = items[0]
    assert item["state"] == "rejected"
    assert item["sender"] == "ceo@example.org"
    assert item["recipients"] == [RCPT]
    assert "dmarc" in item["reason"].lower()
    refused = [e for e in gw.events("rejected") if e.get("queue_id") == item["id"]]
    assert refused and refused[0]["stage"] == "data" and refused[0]["reply"].startswith("550 5.7.1")
    assert not gw.events("queued")
    assert nothing_delivered(gw)

    shown = gw.cli("queue", "show", item["id"]).stdout
    reason_line = next(line for line in shown.splitlines() if line.startswith("reason:"))
    assert "dmarc=fail" in reason_line and "p=reject" in reason_line
    assert "state:       rejected" in shown

    released = gw.cli("queue", "release", item["id"])
    assert f"released {item['id']}" in released.stdout
    # The running daemon did it (through its control socket), and its log says so.
    wait_for(lambda: [e for e in gw.events("released") if e.get("queue_id") == item["id"]])

    raw = gw.wait_delivered(1)[0]
    prepended = split_delivered(raw, message)
    assert [field_name(f) for f in prepended] == ["authentication-results", "received"]
    results = parse_results(prepended[0])
    assert (results["spf"].result, results["dmarc"].result) == ("fail", "fail")
    assert not gw.delivered(gw.maildir / ".Junk")
    assert rejected_items(gw) == []
    wait_for(lambda: [e for e in gw.events("delivered") if e.get("queue_id") == item["id"]])


def test_02b_refused_message_stays_refused_when_a_crash_loses_its_folder(make_gateway: MakeGateway) -> None:
    gw = make_gateway(ENFORCE)
    publish_author(gw, "example.org", spf=SPF_FAIL, dmarc="v=DMARC1; p=reject")

    code, reply = send(gw, spoofed(), "ceo@example.org")
    assert code == 550, reply
    queue_id = wait_rejected(gw)[0]["id"]
    gw.kill_all()
    # Power loss within the second before a checkpoint: the fdatasynced journal record reached the
    # disk, the unsynced rejected/<id> folder did not. The checkpoint may already have retired the
    # journal by the time of the kill, so the state is made exactly: the journal record is what the
    # spool appended before the 550 (its metadata and its bytes), the folder is gone.
    spool = gw.data_dir / "spool"
    folder = spool / "rejected" / queue_id
    record = journal.encode((folder / "meta.json").read_bytes(), [(folder / "message.eml").read_bytes()])
    (spool / "journal").mkdir(exist_ok=True)
    for stale in (spool / "journal").glob("*.wal"):
        stale.unlink()
    (spool / "journal" / f"{time.time_ns()}-999999.wal").write_bytes(b"".join(record))
    shutil.rmtree(folder)
    gw.start()  # returns once the banner is served: recovery has run

    assert [item["id"] for item in rejected_items(gw)] == [queue_id]
    assert f"{queue_id} restored from the journal" in gw.log()
    assert nothing_delivered(gw), "a message refused with 550 5.7.1 was delivered after the crash"


# -- 3. the same message under monitor ---------------------------------------------------------


def test_03_dmarc_reject_under_monitor_is_delivered_and_tagged(make_gateway: MakeGateway) -> None:
    gw = make_gateway()  # the fixture's default: checks.dmarc = "monitor"
    publish_author(gw, "example.org", spf=SPF_FAIL, dmarc="v=DMARC1; p=reject")
    message = spoofed()

    code, reply = send(gw, message, "ceo@example.org")

    assert code == 250, reply
    raw = gw.wait_delivered(1)[0]
    prepended = split_delivered(raw, message)
    results = parse_results(prepended[0])
    assert results["dmarc"].result == "fail"
    assert prop(results["dmarc"], "header", "from") == "example.org"
    assert results["spf"].result == "fail"
    assert results["dkim"].result == "none"
    assert rejected_items(gw) == []
    assert not gw.delivered(gw.maildir / ".Junk")


# -- 4. p=quarantine under enforce: the Junk folder ----------------------------------------------


def test_04_dmarc_quarantine_is_delivered_to_the_junk_folder(make_gateway: MakeGateway) -> None:
    gw = make_gateway(ENFORCE)
    publish_author(gw, "example.org", spf=SPF_FAIL, dmarc="v=DMARC1; p=quarantine")
    message = spoofed()

    code, reply = send(gw, message, "ceo@example.org")

    assert code == 250, reply
    junk = gw.maildir / ".Junk"
    raw = gw.wait_delivered(1, maildir=junk)[0]
    assert parse_results(split_delivered(raw, message)[0])["dmarc"].result == "fail"
    assert gw.delivered() == []
    queued = [e for e in gw.events("queued") if e["queue_id"] == queue_id_of(reply)]
    assert queued and queued[0]["quarantine"] is True


# -- 5. forged Authentication-Results ---------------------------------------------------------------


def test_05_forged_authentication_results_of_ours_are_removed_others_kept(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    publish_author(gw, "example.org", spf=SPF_FAIL, dmarc="v=DMARC1; p=none")
    forged = [
        b"Authentication-Results: mx.test; dkim=pass header.d=example.org header.s=sel\r\n",
        b"authentication-results:   MX.TEST;\r\n\tspf=pass smtp.mailfrom=example.org;\r\n\tdmarc=pass\r\n",
        b"AUTHENTICATION-RESULTS: mx.test (forged\r\n by someone); dmarc=pass header.from=example.org\r\n",
    ]
    theirs = b"Authentication-Results: other.example; spf=pass smtp.mailfrom=example.org\r\n"
    lookalike = b"Authentication-Results: mx.test.evil.example; dkim=pass header.d=example.org\r\n"
    body = b"Quoted: Authentication-Results: mx.test; dkim=pass\r\n"
    head = [
        b"Received: from relay.other.example by other.example; Mon, 01 Jan 2024 12:00:00 +0000\r\n",
        forged[0], theirs, forged[1],
        b"From: Alice <alice@example.org>\r\n", b"To: " + RCPT.encode() + b"\r\n",
        forged[2], lookalike,
        b"Subject: \xc3\xa9t\xc3\xa9 8-bit\r\n", b"Message-ID: <5@example.org>\r\n",
    ]
    message = b"".join(head) + b"\r\n" + body
    expected = b"".join(f for f in head if f not in forged) + b"\r\n" + body

    code, reply = send(gw, message, "alice@example.org")

    assert code == 250, reply
    raw = gw.wait_delivered(1)[0]
    prepended = split_delivered(raw, expected)
    assert [field_name(f) for f in prepended] == ["authentication-results", "received"]
    assert our_results(raw) == [prepended[0]], "only the gateway's own Authentication-Results may remain"
    results = parse_results(prepended[0])
    assert (results["spf"].result, results["dkim"].result, results["dmarc"].result) == ("fail", "none", "fail")
    assert theirs in raw and lookalike in raw and raw.endswith(body)


# -- 6. checks.spf_fail = "reject" ---------------------------------------------------------------


def test_06_spf_fail_reject_refuses_without_dmarc_pass(make_gateway: MakeGateway) -> None:
    gw = make_gateway({"checks": {"spf_fail": "reject"}})
    publish_author(gw, "example.org", spf=SPF_FAIL, dmarc=None)  # no DMARC record: nothing rescues it
    message = make_message(to=RCPT)

    code, reply = send(gw, message, "alice@example.org")

    assert code == 550, reply
    assert reply.startswith("5.7.23"), reply
    items = wait_rejected(gw)
    assert len(items) == 1 and "spf=fail" in items[0]["reason"]
    shown = json.loads(gw.cli("queue", "show", items[0]["id"], "--json").stdout)
    assert shown["verdicts"]["spf"]["result"] == "fail"
    assert nothing_delivered(gw)

    # SPF fails here too, but an aligned DKIM signature makes DMARC pass: not held against it.
    publish_author(gw, "example.net", spf=SPF_FAIL, dmarc="v=DMARC1; p=reject")
    signer = rsa_signer("example.net")
    signer.publish(gw.dns)
    forwarded = signer.sign(make_message(from_="Carol <carol@example.net>", to=RCPT))
    code, reply = send(gw, forwarded, "carol@example.net")
    assert code == 250, reply
    results = parse_results(split_delivered(gw.wait_delivered(1)[0], forwarded)[0])
    assert (results["spf"].result, results["dkim"].result, results["dmarc"].result) == ("fail", "pass", "pass")
    assert len(rejected_items(gw)) == 1


# -- 7. DNS trouble, and From problems ------------------------------------------------------------


def test_07_dns_timeouts_are_temperror_and_never_refused(make_gateway: MakeGateway) -> None:
    gw = make_gateway({"checks": {"dmarc": "enforce", "spf_fail": "reject"}})
    for name in ("example.org", "_dmarc.example.org"):
        gw.dns.set_timeout(name)
    gw.dns.add("example.com", "TXT", SPF_FAIL)
    gw.dns.set_servfail("_dmarc.example.com")
    timed_out = make_message(to=RCPT)
    servfail = make_message(from_="Dan <dan@example.com>", to=RCPT)

    code, reply = send(gw, timed_out, "alice@example.org")
    assert code == 250, reply
    code, reply = send(gw, servfail, "dan@example.com")
    assert code == 250, reply

    delivered = gw.wait_delivered(2)
    by_original = {}
    for raw in delivered:
        original = timed_out if raw.endswith(timed_out) else servfail
        by_original[original] = parse_results(split_delivered(raw, original)[0])
    first = by_original[timed_out]
    assert (first["spf"].result, first["dmarc"].result) == ("temperror", "temperror")
    second = by_original[servfail]
    assert (second["spf"].result, second["dmarc"].result) == ("fail", "temperror")
    assert rejected_items(gw) == []


def test_07b_multiple_from_headers_are_refused_under_enforce(make_gateway: MakeGateway) -> None:
    gw = make_gateway(ENFORCE)
    publish_author(gw, "example.org", spf=SPF_PASS, dmarc="v=DMARC1; p=none")
    message = make_message(to=RCPT, extra=b"From: Mallory <mallory@example.net>\r\n")

    code, reply = send(gw, message, "alice@example.org")

    assert code == 550, reply
    assert reply.startswith("5.7.1"), reply
    items = wait_rejected(gw)
    assert "multiple-from" in items[0]["reason"]
    assert nothing_delivered(gw)


# -- 8. subdomain policy -------------------------------------------------------------------------


def test_08_subdomain_policy_sp_applies_to_subdomains_only(make_gateway: MakeGateway) -> None:
    gw = make_gateway(ENFORCE)
    publish_author(gw, "example.org", spf=SPF_FAIL, dmarc="v=DMARC1; p=none; sp=reject")
    gw.dns.add("sub.example.org", "TXT", SPF_FAIL)  # no _dmarc.sub.example.org: the org record applies

    code, reply = send(gw, spoofed("sub.example.org"), "ceo@sub.example.org")
    assert code == 550, reply
    assert reply.startswith("5.7.1"), reply
    items = wait_rejected(gw)
    assert "header.from=sub.example.org" in items[0]["reason"] and "p=reject" in items[0]["reason"]

    # The organisational domain itself is under p=none: the same failure is only tagged.
    parent = spoofed("example.org")
    code, reply = send(gw, parent, "ceo@example.org")
    assert code == 250, reply
    results = parse_results(split_delivered(gw.wait_delivered(1)[0], parent)[0])
    assert results["dmarc"].result == "fail"
    assert len(rejected_items(gw)) == 1


def test_09_received_names_the_client_by_its_forward_confirmed_reverse_name(make_gateway: MakeGateway) -> None:
    gw = make_gateway()
    gw.dns.add("1.0.0.127.in-addr.arpa", "PTR", "mx.client.test")
    gw.dns.add("mx.client.test", "A", "127.0.0.1")
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="helo.client.test", timeout=10) as client:
        client.sendmail("s@client.test", ["alice@example.test"], b"From: s@client.test\r\nSubject: r\r\n\r\nbody\r\n")
    [delivered] = gw.wait_delivered(1)
    assert b"Received: from helo.client.test (mx.client.test [127.0.0.1])\r\n" in delivered
