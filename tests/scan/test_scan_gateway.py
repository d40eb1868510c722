"""Scanning end to end: real SMTP into the real gateway daemon, which asks real rspamd, spamd
and clamd (Debian's packages, started by the fixtures on 127.0.0.1, no network).

Each scenario follows the message to where it ends: the reply at the end of
DATA, the Maildir inbox or its ``.Junk`` folder (the spam label), the
``rejected`` area and the ``queue`` commands, the mail-event log and
``/metrics``.
"""

from __future__ import annotations

import json
import re
import smtplib
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.conftest import Gateway, wait_for
from tests.scan.test_scan_clients import CLEAN_MESSAGE, GTUBE, infected, message
from tests.scanners import VIRUS_NAME, ScannerProcess

MakeGateway = Callable[..., Gateway]
BOB = "bob@example.test"
ALICE = "alice@example.org"


def send(gw: Gateway, data: bytes, *, mail_from: str = ALICE, rcpt: str = BOB) -> tuple[int, str]:
    """One transaction over real SMTP; the reply to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as client:
        client.ehlo("client.example.org")
        assert client.mail(mail_from)[0] == 250
        code, reply = client.rcpt(rcpt)
        assert code == 250, reply
        code, reply = client.data(data)
        return code, reply.decode()


def spam(from_: str = f"Alice <{ALICE}>") -> bytes:
    return message(GTUBE + b"\r\n", subject="Test spam").replace(f"From: Alice <{ALICE}>".encode(),
                                                                   f"From: {from_}".encode())


def headers(raw: bytes) -> str:
    return raw[: raw.index(b"\r\n\r\n")].decode("ascii", "replace")


def rejected(gw: Gateway, count: int = 1) -> list[dict[str, Any]]:
    def listed() -> list[dict[str, Any]]:
        return list(json.loads(gw.cli("queue", "list", "--state", "rejected", "--json").stdout))
    return list(wait_for(lambda: len(items := listed()) >= count and items, timeout=10))


def metrics(gw: Gateway) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def metric(gw: Gateway, scanner: str, result: str) -> float:
    pattern = rf'^sesmail_scan_results_total\{{result="{result}",scanner="{scanner}"\}} (\S+)$'
    found = re.search(pattern, metrics(gw), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def junk(gw: Gateway) -> list[bytes]:
    return gw.delivered(gw.maildir / ".Junk")


# -- rspamd ------------------------------------------------------------------------------------------


def test_01_rspamd_refuses_gtube_keeps_it_and_delivers_a_clean_message(
        make_gateway: MakeGateway, rspamd_server: ScannerProcess) -> None:
    gw = make_gateway({"scan": {"rspamd_url": rspamd_server.address, "timeout": "10s"}})
    code, reply = send(gw, spam())
    assert (code, reply) == (550, "5.7.1 Message rejected as spam")
    item = rejected(gw)[0]
    assert item["reason"].startswith("spam score 15 >= 15 (rspamd)")
    shown = gw.cli("queue", "show", item["id"], "--json").stdout
    assert json.loads(shown)["verdicts"]["scan"]["spam_score"] == 15
    event = next(e for e in gw.events("rejected") if e.get("queue_id") == item["id"])
    assert event["reply"].startswith("550 5.7.1") and event["verdicts"]["scan"]["results"][0]["scanner"] == "rspamd"

    code, reply = send(gw, CLEAN_MESSAGE)
    assert code == 250, reply
    delivered = headers(gw.wait_delivered(1)[0])
    assert re.search(r"^X-Spam-Status: No, score=-?[\d.]+ label=6 reject=15\r\n\tscanner=rspamd tests=",
                     delivered, re.MULTILINE)
    assert re.search(r"^X-Spam-Score: -?[\d.]+\r$", delivered, re.MULTILINE)
    queued = gw.events("queued")[-1]
    assert queued["scan"]["results"][0]["result"] == "clean"
    assert metric(gw, "rspamd", "spam") == 1 and metric(gw, "rspamd", "clean") == 1
    assert 'sesmail_scan_seconds_count{scanner="rspamd"} 2.0' in metrics(gw)


def test_02_rspamd_gtube_is_labelled_when_the_reject_score_is_above_it(
        make_gateway: MakeGateway, rspamd_server: ScannerProcess) -> None:
    gw = make_gateway({"scan": {"rspamd_url": rspamd_server.address, "reject_score": 50.0}})
    code, reply = send(gw, spam())
    assert code == 250, reply
    labelled = wait_for(lambda: junk(gw))
    assert "X-Spam-Status: Yes, score=15 label=6 reject=50" in headers(labelled[0])
    assert gw.delivered() == []
    assert gw.events("queued")[-1]["quarantine"] is True


def test_03_a_route_with_spam_label_turns_the_reject_into_a_label(
        make_gateway: MakeGateway, rspamd_server: ScannerProcess) -> None:
    gw = make_gateway({"scan": {"rspamd_url": rspamd_server.address}})
    gw.cli("routes", "add", "carol@example.test", "--action", "maildir", "--target", "carol", "--spam", "label")
    code, reply = send(gw, spam(), rcpt="carol@example.test")
    assert code == 250, reply
    carol = gw.data_dir / "carol"
    assert "X-Spam-Status: Yes, score=15" in headers(gw.wait_delivered(1, carol / ".Junk")[0])
    assert gw.delivered(carol) == []
    # The same message to a recipient on the default policy is still refused.
    assert send(gw, spam())[0] == 550
    # To both at once: SMTP answers once, so nobody loses it and both get it labelled.
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as client:
        client.ehlo("client.example.org")
        client.mail(ALICE)
        client.rcpt(BOB)
        client.rcpt("carol@example.test")
        code, reply = client.data(spam())
    assert code == 250, reply
    assert len(gw.wait_delivered(2, carol / ".Junk")) == 2
    assert len(wait_for(lambda: junk(gw))) == 1 and gw.delivered() == []
    assert gw.events("queued")[-1]["quarantine"] is True


# -- spamd -------------------------------------------------------------------------------------------


def test_04_spamd_refuses_gtube_labels_it_for_a_label_route_and_skips_an_off_route(
        make_gateway: MakeGateway, spamd_server: ScannerProcess) -> None:
    gw = make_gateway({"scan": {"spamd": spamd_server.address, "timeout": "30s"}})
    gw.cli("routes", "add", "carol@example.test", "--action", "maildir", "--target", "carol", "--spam", "label")
    gw.cli("routes", "add", "dave@example.test", "--action", "maildir", "--target", "dave", "--spam", "off")

    assert send(gw, spam()) == (550, "5.7.1 Message rejected as spam")
    assert rejected(gw)[0]["reason"].startswith("spam score 1000 >= 15 (spamd)")

    assert send(gw, spam(), rcpt="carol@example.test")[0] == 250
    labelled = headers(gw.wait_delivered(1, gw.data_dir / "carol" / ".Junk")[0])
    assert re.search(r"X-Spam-Status: Yes, score=1000 .*\r\n\tscanner=spamd tests=.*GTUBE", labelled)

    assert send(gw, spam(), rcpt="dave@example.test")[0] == 250
    unscanned = headers(gw.wait_delivered(1, gw.data_dir / "dave")[0])
    assert "X-Spam-Status" not in unscanned

    assert send(gw, CLEAN_MESSAGE)[0] == 250
    assert "X-Spam-Status: No, score=" in headers(gw.wait_delivered(1)[0])
    assert metric(gw, "spamd", "spam") == 2 and metric(gw, "spamd", "clean") == 1


# -- clamd -------------------------------------------------------------------------------------------


def test_05_clamd_refuses_an_infected_message_keeps_it_and_release_delivers_it(
        make_gateway: MakeGateway, clamd_server: ScannerProcess) -> None:
    gw = make_gateway({"scan": {"clamd": clamd_server.address}})
    assert send(gw, infected()) == (550, "5.7.1 Message rejected: it contains a virus")
    item = rejected(gw)[0]
    assert item["reason"] == f"virus {VIRUS_NAME} (clamd)"
    assert json.loads(gw.cli("queue", "show", item["id"], "--json").stdout)["verdicts"]["scan"]["virus"] == VIRUS_NAME
    assert metric(gw, "clamd", "virus") == 1

    gw.cli("queue", "release", item["id"])  # the operator's override
    released = headers(gw.wait_delivered(1)[0])
    assert f"X-Virus-Status: Infected ({VIRUS_NAME}) scanner=clamd" in released

    assert send(gw, CLEAN_MESSAGE)[0] == 250
    assert "X-Virus-Status: Clean" in headers(gw.wait_delivered(2)[-1])


# -- scanner failures --------------------------------------------------------------------------------


def test_06_a_scanner_stopped_mid_run_means_tagged_and_delivered(
        make_gateway: MakeGateway, own_clamd: ScannerProcess) -> None:
    gw = make_gateway({"scan": {"clamd": own_clamd.address, "timeout": "5s"}})
    assert send(gw, CLEAN_MESSAGE)[0] == 250
    own_clamd.stop()
    code, reply = send(gw, infected())
    assert code == 250, reply  # nothing could look at it: accepted, and the label says so
    tagged = [headers(raw) for raw in gw.wait_delivered(2)]
    assert sum("X-Virus-Status: Clean" in h for h in tagged) == 1
    assert sum("X-Virus-Status: Unknown, scan failed" in h for h in tagged) == 1
    assert "virus scan failed (clamd: ConnectionRefusedError" in gw.events("queued")[-1]["decision"]
    assert metric(gw, "clamd", "error") == 1


def test_07_a_scanner_down_under_tempfail_answers_451_and_queues_nothing(
        make_gateway: MakeGateway, own_clamd: ScannerProcess) -> None:
    gw = make_gateway({"scan": {"clamd": own_clamd.address, "on_failure": "tempfail"}})
    assert send(gw, CLEAN_MESSAGE)[0] == 250
    own_clamd.stop()
    assert send(gw, CLEAN_MESSAGE) == (451, "4.7.1 Message could not be scanned, try again later")
    assert [e["reply"] for e in gw.events("rejected")] == ["451 4.7.1 Message could not be scanned, try again later"]
    assert len(gw.wait_delivered(1)) == 1
    wait_for(lambda: json.loads(gw.cli("queue", "list", "--json").stdout) == [])
    assert len(gw.delivered()) == 1


def test_08_a_scanner_that_stops_answering_times_out_and_the_message_is_tagged(
        make_gateway: MakeGateway, own_clamd: ScannerProcess) -> None:
    gw = make_gateway({"scan": {"clamd": own_clamd.address, "timeout": "1s"}})
    own_clamd.pause()  # accepts connections, answers nothing
    code, reply = send(gw, CLEAN_MESSAGE)
    assert code == 250, reply
    assert "X-Virus-Status: Unknown, scan failed" in headers(gw.wait_delivered(1)[0])
    assert "no verdict within 1s" in gw.events("queued")[-1]["decision"]


# -- sender lists ------------------------------------------------------------------------------------


def test_09_allow_from_skips_spam_rejection_but_never_virus_rejection(
        make_gateway: MakeGateway, rspamd_server: ScannerProcess, clamd_server: ScannerProcess) -> None:
    gw = make_gateway({"scan": {"rspamd_url": rspamd_server.address, "clamd": clamd_server.address}})
    gw.cli("routes", "add", BOB, "--action", "maildir", "--target", "mail", "--allow-from", ALICE)
    assert send(gw, spam())[0] == 250
    assert GTUBE in gw.wait_delivered(1)[0]
    assert junk(gw) == []
    assert send(gw, infected()) == (550, "5.7.1 Message rejected: it contains a virus")
    # Another sender gains nothing from Alice's entry.
    assert send(gw, spam(from_="Eve <eve@example.net>"), mail_from="eve@example.net")[0] == 550


def test_10_block_from_refuses_globally_and_per_route(
        make_gateway: MakeGateway, clamd_server: ScannerProcess) -> None:
    gw = make_gateway({"scan": {"clamd": clamd_server.address, "block_from": ["@junk.example"]}})
    gw.cli("routes", "add", "carol@example.test", "--action", "maildir", "--target", "carol",
           "--block-from", "mallory@example.net")
    blocked = "5.7.1 Message rejected: sender blocked by the recipient's policy"
    assert send(gw, CLEAN_MESSAGE, mail_from="promo@junk.example") == (550, blocked)
    mallory = CLEAN_MESSAGE.replace(f"Alice <{ALICE}>".encode(), b"Mallory <mallory@example.net>")
    assert send(gw, mallory, rcpt="carol@example.test") == (550, blocked)
    assert rejected(gw, 2)[-1]["reason"] == "sender matches block_from mallory@example.net"
    assert send(gw, mallory, rcpt=BOB)[0] == 250  # Bob's route does not block Mallory


def test_11_a_dmarc_allow_entry_counts_only_when_dmarc_passed(
        make_gateway: MakeGateway, rspamd_server: ScannerProcess) -> None:
    gw = make_gateway({"scan": {"rspamd_url": rspamd_server.address, "allow_from": ["dmarc:bank.test"]}})
    gw.dns.add("bank.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    gw.dns.add("_dmarc.bank.test", "TXT", "v=DMARC1; p=none")
    from_bank = spam(from_="Bank <news@bank.test>")

    # Genuine: SPF passes for bank.test and aligns with From, so DMARC passes and the entry applies.
    assert send(gw, from_bank, mail_from="news@bank.test")[0] == 250
    assert GTUBE in gw.wait_delivered(1)[0]
    # Forged: same From, but sent from another envelope domain; DMARC fails and the entry gains nothing.
    assert send(gw, from_bank, mail_from="bounce@forger.example") == (550, "5.7.1 Message rejected as spam")
    assert len(gw.delivered()) == 1
