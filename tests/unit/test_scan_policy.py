"""Scanning's pure parts: the scan rows of the policy table, the sender lists, the [scan]
config keys, the route attributes, the verdict headers, and the scanners' reply parsers."""

from __future__ import annotations

import asyncio

import pytest

from sesmail_gateway.checks.policy import POLICY_TABLE, Decision, decide_scan, for_message
from sesmail_gateway.config import ConfigError, load_mapping
from sesmail_gateway.routes import Action, Rule
from sesmail_gateway.routes.records import item_to_rule, public_fields, rule_to_item
from sesmail_gateway.scan import CLEAN, ERROR, VIRUS, Envelope, ScanError, ScanResult
from sesmail_gateway.scan.clamd import parse_reply as clamd_reply
from sesmail_gateway.scan.lists import Sender, check_sender_entries, first_match
from sesmail_gateway.scan.rspamd import auth_headers
from sesmail_gateway.scan.service import Scanning
from sesmail_gateway.scan.spamd import parse_reply as spamd_reply

ACCEPT = Decision("accept", None, "no policy applies")


# -- the policy table ------------------------------------------------------------------------------


@pytest.mark.parametrize(("outcome", "action", "key"), [
    (("virus", "found", "*", "virus X"), "reject", "virus"),
    (("sender", "blocked", "*", "blocked"), "reject", "sender"),
    (("spam", "reject", "reject", "spam 20"), "reject", "spam"),
    (("spam", "reject", "label", "spam 20"), "quarantine", "spam"),
    (("spam", "label", "reject", "spam 8"), "quarantine", "spam"),
    (("spam", "reject", "allowed", "spam 20"), "accept", None),
    (("scan", "error", "accept", "down"), "accept", None),
    (("scan", "error", "tempfail", "down"), "tempfail", "scan"),
])
def test_each_scan_row_gives_its_action(outcome: tuple[str, str, str, str], action: str, key: str | None) -> None:
    decision = decide_scan(ACCEPT, [outcome])
    assert (decision.action, decision.reply_key) == (action, key)


def test_the_strictest_wins_and_a_known_virus_beats_a_scanner_failure() -> None:
    decision = decide_scan(ACCEPT, [("scan", "error", "tempfail", "rspamd down"), ("virus", "found", "*", "v")])
    assert decision.action == "reject" and decision.reply_key == "virus"
    dmarc = Decision("quarantine", "dmarc", "dmarc=fail")
    assert decide_scan(dmarc, [("spam", "reject", "reject", "spam")]).reply_key == "spam"
    assert decide_scan(dmarc, [("spam", "label", "reject", "spam")]).reply_key == "dmarc"


def test_accepted_outcomes_are_noted_in_the_reason() -> None:
    decision = decide_scan(ACCEPT, [("scan", "error", "accept", "virus scan failed")])
    assert decision == Decision("accept", None, "virus scan failed (accept)")


def test_every_scan_row_names_a_known_action() -> None:
    assert {action for action in POLICY_TABLE.values()} <= {"accept", "quarantine", "tempfail", "reject"}


@pytest.mark.parametrize(("actions", "expected"), [
    (["reject", "reject"], "reject"),
    (["accept", "accept"], "accept"),
    (["accept", "reject"], "quarantine"),  # nobody loses mail; nobody finds refused mail in the inbox
    (["quarantine", "reject"], "quarantine"),
    (["tempfail", "reject"], "tempfail"),
])
def test_recipients_that_disagree(actions: list[str], expected: str) -> None:
    decisions = [Decision(a, None if a == "accept" else "spam", a) for a in actions]
    assert for_message(decisions).action == expected


# -- sender lists ----------------------------------------------------------------------------------


def test_entries_are_normalised_and_bad_ones_named() -> None:
    assert check_sender_entries([" Alice@Example.ORG ", "@Example.net.", "DMARC:bank.test"]) == (
        "alice@example.org", "@example.net", "dmarc:bank.test")
    for bad in ("alice", "@", "dmarc:", "a b@example.org", "x@bad domain"):
        with pytest.raises(ValueError, match="expected user@domain, @domain or dmarc:domain"):
            check_sender_entries([bad])


def test_address_and_domain_entries_match_envelope_or_from_and_dmarc_only_when_passed() -> None:
    sender = Sender.of(envelope="bounce@mailer.example", from_header="Bank <News@Bank.test>",
                       dmarc_result="pass", from_domain="bank.test")
    assert first_match(sender, ["@mailer.example"]) == "@mailer.example"
    assert first_match(sender, ["news@bank.test"]) == "news@bank.test"
    assert first_match(sender, ["dmarc:bank.test"]) == "dmarc:bank.test"
    assert first_match(sender, ["@sub.bank.test", "dmarc:other.test"]) is None
    forged = Sender.of(envelope="x@forger.example", from_header="news@bank.test", dmarc_result="fail",
                       from_domain="bank.test")
    assert first_match(forged, ["dmarc:bank.test"]) is None
    two_froms = Sender.of(envelope="", from_header="a@x.test, b@y.test", dmarc_result="none", from_domain="")
    assert first_match(two_froms, ["a@x.test", "@y.test"]) is None


# -- config ----------------------------------------------------------------------------------------


def test_scan_defaults_are_the_documented_ones() -> None:
    scan = load_mapping({}).scan
    assert (scan.rspamd_url, scan.spamd, scan.clamd, scan.enabled) == ("", "", "", False)
    assert (scan.timeout, scan.max_size, scan.reject_score, scan.label_score) == (20.0, 10485760, 15.0, 6.0)
    assert (scan.on_failure, scan.allow_from, scan.block_from) == ("accept", (), ())
    assert load_mapping({"scan": {"timeout": "1500ms", "clamd": "/run/clamav/clamd.ctl"}}).scan.timeout == 1.5


@pytest.mark.parametrize(("data", "message"), [
    ({"rspamd_url": "127.0.0.1:11333"}, "scan.rspamd_url: expected http://host:port"),
    ({"spamd": "localhost"}, "scan.spamd: expected host:port"),
    ({"timeout": "soon"}, "scan.timeout: expected a duration"),
    ({"on_failure": "drop"}, "scan.on_failure: expected one of accept, tempfail"),
    ({"label_score": 20.0}, "scan.label_score: must not be above scan.reject_score"),
    ({"max_size": 0}, "scan.max_size: must be greater than 0"),
    ({"allow_from": ["nobody"]}, "scan.allow_from: bad sender entry 'nobody'"),
    ({"block_from": "@x.test"}, "scan.block_from: expected a list of strings"),
    ({"virus": "reject"}, "scan.virus: unknown key"),
])
def test_bad_scan_values_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_mapping({"scan": data})
    assert str(info.value).startswith(message)


# -- route records ---------------------------------------------------------------------------------


def test_scan_attributes_round_trip_and_are_absent_when_unset() -> None:
    rule = Rule("bob@example.test", (Action("maildir", "mail"),), spam="label",
                allow_from=("dmarc:bank.test",), block_from=("@junk.example",))
    item = rule_to_item(rule)
    assert (item["spam"], item["allow_from"], item["block_from"]) == ("label", ["dmarc:bank.test"], ["@junk.example"])
    assert item_to_rule(item) == rule
    assert public_fields(rule)["spam"] == "label"
    plain = rule_to_item(Rule("*", (Action("maildir", "mail"),)))
    assert not {"spam", "allow_from", "block_from"} & set(plain)


def test_an_older_record_without_them_and_a_string_set_both_read() -> None:
    base = {"PK": "ROUTE#*", "SK": "RULE#v1", "action": "maildir", "target": "mail"}
    assert item_to_rule(base).spam == ""
    assert item_to_rule({**base, "block_from": {"b@x.test", "A@x.test"}}).block_from == ("a@x.test", "b@x.test")
    with pytest.raises(ValueError, match="spam: expected one of label, off"):
        item_to_rule({**base, "spam": "drop"})
    with pytest.raises(ValueError, match="allow_from: bad sender entry"):
        item_to_rule({**base, "allow_from": ["nobody"]})


# -- reply parsers and request headers -------------------------------------------------------------


def test_spamd_reply_parsing() -> None:
    ok = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 11\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBE,OTHER"
    assert spamd_reply(ok) == (1000.0, ("GTUBE", "OTHER"))
    assert spamd_reply(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -0.5 / 5.0\r\n\r\n") == (-0.5, ())
    for bad in (b"", b"HTTP/1.1 200 OK\r\n\r\n", b"SPAMD/1.0 76 Bad header line\r\n\r\n",
                b"SPAMD/1.1 0 EX_OK\r\n\r\n"):
        with pytest.raises(ScanError):
            spamd_reply(bad)


def test_clamd_reply_parsing() -> None:
    assert clamd_reply(b"stream: OK\0") == ""
    assert clamd_reply(b"stream: Eicar-Signature FOUND\0") == "Eicar-Signature"
    with pytest.raises(ScanError, match="size limit exceeded"):
        clamd_reply(b"INSTREAM size limit exceeded. ERROR\0")


def test_rspamd_is_given_our_verdicts_and_no_temporary_errors() -> None:
    headers = auth_headers({"spf": {"result": "temperror"}, "dkim": [{"result": "pass", "domain": "a.test"}],
                            "dmarc": {"result": "fail", "disposition": "quarantine"}})
    assert "SPF" not in headers
    assert headers["DKIM"] == '{"results": [{"result": "pass", "domain": "a.test"}]}'
    assert headers["DMARC"] == '{"result": "quarantine"}'


# -- the service, with scripted scanners (the real ones are in tests/scan) -------------------------------


class Scripted:
    def __init__(self, name: str, kind: str, result: ScanResult | Exception) -> None:
        self.name, self.kind, self.result, self.calls = name, kind, result, 0

    def scan(self, message: bytes, envelope: Envelope) -> ScanResult:
        self.calls += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


ENVELOPE = Envelope("Q1", "alice@example.org", ("bob@example.test",), "192.0.2.1", "mail.example.org")
MESSAGE = b"From: alice@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


def run(scanning: Scanning, routes: list[dict[str, object] | None]) -> tuple[str, str]:
    report = asyncio.run(scanning.scan(MESSAGE, envelope=ENVELOPE, routes=routes, auth_decision=ACCEPT))
    return report.decision.action, report.header.decode()


def test_one_spam_scanner_down_is_covered_by_the_other() -> None:
    config = load_mapping({"scan": {"rspamd_url": "http://127.0.0.1:1", "spamd": "127.0.0.1:2"}}).scan
    scanners = [Scripted("rspamd", "spam", ScanError("down")),
                Scripted("spamd", "spam", ScanResult("spamd", CLEAN, score=20.0, symbols=("GTUBE",)))]
    action, header = run(Scanning(config, scanners), [None])
    assert action == "reject"
    assert "X-Spam-Status: Yes, score=20" in header and "scanner=spamd" in header


def test_blocked_everywhere_skips_the_scanners_and_allowed_skips_only_spam_scanners() -> None:
    config = load_mapping({"scan": {"rspamd_url": "http://127.0.0.1:1", "clamd": "127.0.0.1:2",
                                    "block_from": ["@example.org"]}}).scan
    spam = Scripted("rspamd", "spam", ScanResult("rspamd", CLEAN, score=1.0))
    virus = Scripted("clamd", "virus", ScanResult("clamd", VIRUS, virus="X"))
    assert run(Scanning(config, [spam, virus]), [None])[0] == "reject"
    assert spam.calls == virus.calls == 0
    action, header = run(Scanning(config, [spam, virus]), [{"allow_from": ["alice@example.org"]}])
    assert (action, spam.calls, virus.calls) == ("reject", 0, 1)  # the route's allow beats the global block
    assert "X-Virus-Status: Infected (X) scanner=clamd" in header and "X-Spam-Status" not in header


def test_a_scanner_bug_is_an_error_result_not_a_lost_message() -> None:
    config = load_mapping({"scan": {"clamd": "127.0.0.1:2"}}).scan
    seen: list[tuple[str, str]] = []
    scanning = Scanning(config, [Scripted("clamd", "virus", RuntimeError("bug"))],
                        observe=lambda name, result, seconds: seen.append((name, result)))
    action, header = run(scanning, [None])
    assert (action, seen) == ("accept", [("clamd", ERROR)])
    assert "X-Virus-Status: Unknown, scan failed" in header


def test_only_the_first_max_size_bytes_are_scanned() -> None:
    config = load_mapping({"scan": {"clamd": "127.0.0.1:2", "max_size": 16}}).scan
    seen: list[bytes] = []

    class Recording(Scripted):
        def scan(self, message: bytes, envelope: Envelope) -> ScanResult:
            seen.append(message)
            return ScanResult("clamd", CLEAN)

    run(Scanning(config, [Recording("clamd", "virus", ScanError("unused"))]), [None])
    assert seen == [MESSAGE[:16]]
