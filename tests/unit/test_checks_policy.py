"""The policy table, the Authentication-Results header, and forged-header removal."""

from __future__ import annotations

import dataclasses
import json

import authres
import pytest

from sesmail_gateway.checks import (
    ArcResult,
    DkimResult,
    DmarcResult,
    SpfResult,
    Verdicts,
    authentication_results,
    decide,
    strip_forged_authentication_results,
)

SPF_PASS = SpfResult("pass", "example.org")
SPF_FAIL = SpfResult("fail", "example.org")


def dmarc(result: str, disposition: str = "none", reason: str = "", policy: str = "none") -> DmarcResult:
    return DmarcResult(result, "example.org" if reason not in ("multiple-from",) else "", policy,
                       disposition, reason=reason, record_domain="example.org")


@pytest.mark.parametrize(("verdicts", "mode", "spf_fail", "action", "key"), [
    (Verdicts(SPF_PASS, dmarc=dmarc("pass")), "enforce", "reject", "accept", None),
    (Verdicts(SPF_FAIL, dmarc=dmarc("fail", "reject", policy="reject")), "enforce", "tag", "reject", "dmarc"),
    (Verdicts(SPF_FAIL, dmarc=dmarc("fail", "reject", policy="reject")), "monitor", "tag", "accept", None),
    (Verdicts(SPF_FAIL, dmarc=dmarc("fail", "quarantine", policy="quarantine")), "enforce", "tag",
     "quarantine", "dmarc"),
    (Verdicts(SPF_FAIL, dmarc=dmarc("fail", "quarantine", policy="quarantine")), "monitor", "tag",
     "accept", None),
    (Verdicts(SPF_FAIL, dmarc=dmarc("fail", "none")), "enforce", "tag", "accept", None),
    # monitor mode does not stop the operator's own SPF rule
    (Verdicts(SPF_FAIL, dmarc=dmarc("fail", "reject", policy="reject")), "monitor", "reject", "reject", "spf"),
    (Verdicts(SPF_FAIL, dmarc=dmarc("none")), "enforce", "reject", "reject", "spf"),
    # the strictest action wins
    (Verdicts(SPF_FAIL, dmarc=dmarc("fail", "quarantine", policy="quarantine")), "enforce", "reject",
     "reject", "spf"),
    (Verdicts(SPF_FAIL, dmarc=dmarc("fail", "reject", policy="reject")), "enforce", "reject", "reject", "dmarc"),
    (Verdicts(SPF_FAIL), "enforce", "reject", "reject", "spf"),          # at MAIL FROM: SPF only
    (Verdicts(SPF_FAIL, dmarc=dmarc("none")), "enforce", "tag", "accept", None),
    # an aligned DKIM pass outweighs SPF fail (forwarding)
    (Verdicts(SPF_FAIL, dmarc=dmarc("pass")), "enforce", "reject", "accept", None),
    # temporary errors never refuse
    (Verdicts(SpfResult("temperror", "example.org"), dmarc=dmarc("temperror")), "enforce", "reject",
     "accept", None),
    (Verdicts(SPF_FAIL, dmarc=dmarc("temperror")), "enforce", "reject", "accept", None),
    # RFC 7489 6.6.1: refused under enforce, only tagged under monitor
    (Verdicts(SPF_PASS, dmarc=dmarc("permerror", "reject", "multiple-from", "reject")), "enforce", "tag",
     "reject", "from"),
    (Verdicts(SPF_PASS, dmarc=dmarc("permerror", "reject", "multiple-from", "reject")), "monitor", "tag",
     "accept", None),
    (Verdicts(SPF_PASS, dmarc=dmarc("permerror", "none", "invalid-record")), "enforce", "reject", "accept", None),
])
def test_policy_table(verdicts: Verdicts, mode: str, spf_fail: str, action: str, key: str | None) -> None:
    decision = decide(verdicts, dmarc_mode=mode, spf_fail=spf_fail)
    assert (decision.action, decision.reply_key) == (action, key)
    assert decision.reason


def test_reject_reason_names_the_policy() -> None:
    verdicts = Verdicts(SPF_FAIL, dmarc=dmarc("fail", "reject", policy="reject"))
    assert "p=reject" in decide(verdicts).reason and "example.org" in decide(verdicts).reason


FULL = Verdicts(
    SpfResult("pass", "example.org"),
    (DkimResult("pass", "example.org", "sel", "rsa-sha256"),
     DkimResult("fail", "esp.example", "s1", "rsa-sha256", 'body hash "mismatch" \\ (got x)'),
     DkimResult("neutral", "example.org", "sel", "rsa-sha256", "l=10 leaves 5 of 15 body bytes unsigned", True)),
    ArcResult("pass"),
    DmarcResult("pass", "example.org", "reject", "none", ("spf", "dkim"), "aligned", "example.org"),
)


def test_header_is_one_folded_field_that_authres_parses() -> None:
    text = authentication_results("mx.example.com", FULL)

    assert text.startswith("Authentication-Results: mx.example.com;\r\n\tspf=pass smtp.mailfrom=example.org;")
    assert not text.endswith("\r\n") and text.isascii()
    assert all(line.startswith("\t") for line in text.split("\r\n")[1:])
    parsed = authres.AuthenticationResultsHeader.parse(text)
    assert parsed.authserv_id == "mx.example.com"
    summary = [(r.method, r.result, {f"{p.type}.{p.name}": p.value for p in r.properties})
               for r in parsed.results]
    assert summary == [
        ("spf", "pass", {"smtp.mailfrom": "example.org"}),
        ("dkim", "pass", {"header.d": "example.org", "header.s": "sel"}),
        ("dkim", "fail", {"header.d": "esp.example", "header.s": "s1"}),
        ("dkim", "neutral", {"header.d": "example.org", "header.s": "sel"}),
        ("dmarc", "pass", {"header.from": "example.org"}),
        ("arc", "pass", {}),
    ]
    assert parsed.results[2].reason and "mismatch" in parsed.results[2].reason


@pytest.mark.parametrize("verdicts", [
    Verdicts(SpfResult("none", "", scope="helo")),
    Verdicts(SpfResult("pass", "mail.example.org", scope="helo"), arc=ArcResult("fail", "ARC-Seal[1] did not validate")),
    Verdicts(SpfResult("temperror", "example.org", "SPF Temporary Error: DNS timeout"),
             (DkimResult("temperror", "example.org", "sel", "", "key lookup failed: timeout"),),
             dmarc=DmarcResult("temperror", "example.org", reason="dns-temperror")),
    Verdicts(SPF_PASS, dmarc=DmarcResult("permerror", policy="reject", disposition="reject",
                                         reason="multiple-from")),
    Verdicts(SpfResult("fail", "ünïcode.example"), dmarc=DmarcResult("fail", "xn--nicode-2ya2c.example",
                                                                      "reject", "reject", (), "not-aligned",
                                                                      "xn--nicode-2ya2c.example")),
])
def test_every_shape_of_verdicts_renders_a_parseable_header(verdicts: Verdicts) -> None:
    text = authentication_results("MX.Example.COM", verdicts)
    assert text.isascii()
    parsed = authres.AuthenticationResultsHeader.parse(text)
    methods = {r.method: r.result for r in parsed.results}
    assert methods["spf"] == verdicts.spf.result
    assert methods["dkim"] == (verdicts.dkim[0].result if verdicts.dkim else "none")
    assert ("arc" in methods) == (verdicts.arc.result != "none")
    if verdicts.spf.scope == "helo" and verdicts.spf.domain:
        assert parsed.results[0].properties[0].name == "helo"


def test_strip_forged_removes_only_our_authentication_results() -> None:
    message = (
        b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Authentication-Results: MX.example.com; dkim=pass\r\n"
        b"\theader.d=bank.example\r\n"
        b"authentication-results :  (forged) \"mx.example.com\" 1;\r\n  spf=pass\r\n"
        b"Authentication-Results: upstream.example; spf=fail smtp.mailfrom=x\r\n"
        b"Authentication-Results: mx.example.com.evil; none\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?= \xff raw 8-bit\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.com; in the body stays\r\n"
    )

    stripped = strip_forged_authentication_results(message, "mx.example.com")

    assert stripped == (
        b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
        b"Authentication-Results: upstream.example; spf=fail smtp.mailfrom=x\r\n"
        b"Authentication-Results: mx.example.com.evil; none\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?= \xff raw 8-bit\r\n"
        b"\r\n"
        b"Authentication-Results: mx.example.com; in the body stays\r\n"
    )


def test_strip_forged_leaves_clean_messages_identical() -> None:
    message = b"From: a@example.org\nAuthentication-Results: other.example; none\n\nbody\n"
    assert strip_forged_authentication_results(message, "mx.example.com") is message


def test_strip_forged_handles_bare_lf_and_headers_without_body() -> None:
    message = b"Authentication-Results: mx.example.com; spf=pass\n x=y\nFrom: a@example.org\n"
    assert strip_forged_authentication_results(message, "mx.example.com") == b"From: a@example.org\n"


def test_every_from_problem_has_a_row_in_the_table() -> None:
    from sesmail_gateway.checks.dmarc import FROM_PROBLEMS
    from sesmail_gateway.checks.policy import POLICY_TABLE

    assert {problem: POLICY_TABLE[("from", problem, "enforce")] for problem in FROM_PROBLEMS} == dict.fromkeys(
        FROM_PROBLEMS, "reject")
    assert all(("from", problem, "monitor") not in POLICY_TABLE for problem in FROM_PROBLEMS)  # monitor tags


# -- the authserv-id, read by the RFC 8601 grammar (authres is the reference parser) -------------------

@pytest.mark.parametrize("value", [
    "mx.example.com; dkim=pass",
    r"(\)) mx.example.com; dkim=pass",
    r"(a \( b) mx.example.com; dkim=pass",
    "(outer (inner) still outer) mx.example.com; dkim=pass",
    "mx.example.com.evil; none",
    "upstream.example; dkim=pass (mx.example.com)",
])
def test_authserv_id_matches_the_rfc8601_reference_parser(value: str) -> None:
    reference = authres.AuthenticationResultsHeader.parse_value(value).authserv_id
    message = f"Authentication-Results: {value}\r\nFrom: a@b.example\r\n\r\n".encode()
    removed = strip_forged_authentication_results(message, "mx.example.com") == b"From: a@b.example\r\n\r\n"
    assert removed is (reference.lower() == "mx.example.com")


@pytest.mark.parametrize("value", [
    '"mx.example.com"; dkim=pass',  # RFC 8601 2.2: authserv-id is a value: token or quoted-string
    r'(c) "mx\.example.com" 1; spf=pass',
    "(x)(y) (z) mx.example.com; none",  # CFWS is any run of comments (RFC 5322 3.2.2)
    "(folded)\r\n mx.example.com; none",
])
def test_every_form_of_cfws_and_value_is_read_where_the_reference_parser_stops(value: str) -> None:
    message = f"Authentication-Results: {value}\r\nFrom: a@b.example\r\n\r\n".encode()
    assert strip_forged_authentication_results(message, "mx.example.com") == b"From: a@b.example\r\n\r\n"


def test_a_quoted_pair_in_a_comment_does_not_hide_our_authserv_id() -> None:
    """"(\\))" is one comment: the old scan ended it at the escaped parenthesis and kept the forgery."""
    message = b"Authentication-Results: (\\)) mx.example.com; dkim=pass header.d=bank.example\r\nFrom: a@b.example\r\n\r\n"
    assert strip_forged_authentication_results(message, "mx.example.com") == b"From: a@b.example\r\n\r\n"


def test_a_field_that_does_not_parse_but_names_us_is_removed() -> None:
    message = b"Authentication-Results: (unclosed mx.example.com; dkim=pass\r\nFrom: a@b.example\r\n\r\n"
    assert strip_forged_authentication_results(message, "mx.example.com") == b"From: a@b.example\r\n\r\n"


@pytest.mark.timeout(30)
def test_stripping_is_linear_in_a_run_of_comments() -> None:
    """A 0.8 MB run of comments took the old quadratic scan 8 s; 8 MB would take it over
    10 minutes. The bound is the test timeout, far above what a linear scan needs."""
    message = b"Authentication-Results: " + b"()" * 4_000_000 + b" mx.example.com; dkim=pass\r\n\r\nbody"
    assert strip_forged_authentication_results(message, "mx.example.com") == b"\r\nbody"


FULL_VERDICTS = Verdicts(
    SpfResult("pass", "example.org", "", "mailfrom"),
    (DkimResult("pass", "example.org", "sel", "rsa-sha256", "", False),
     DkimResult("fail", "other.example", "s2", "rsa-sha1", "body hash mismatch", True)),
    ArcResult("pass", "chain of 2"),
    DmarcResult("pass", "example.org", "reject", "none", ("dkim", "spf"), "", "example.org", 50, "s", "r"),
    checked_at=1700000000.25,
)


@pytest.mark.parametrize("verdicts", [FULL_VERDICTS, Verdicts(SPF_FAIL)])
def test_verdicts_as_a_dict_hold_every_field_and_come_back_equal(verdicts: Verdicts) -> None:
    """``to_dict`` copies each result's fields (no deep copy); the spool's JSON of it reads back the same."""
    data = verdicts.to_dict()
    assert data["spf"] == dataclasses.asdict(verdicts.spf)
    assert data["dkim"] == [dataclasses.asdict(result) for result in verdicts.dkim]
    assert data["arc"] == dataclasses.asdict(verdicts.arc)
    if verdicts.dmarc is not None:
        assert data["dmarc"] == {**dataclasses.asdict(verdicts.dmarc), "aligned": list(verdicts.dmarc.aligned)}
    else:
        assert data["dmarc"] is None
    assert Verdicts.from_dict(json.loads(json.dumps(data))) == verdicts
    data["spf"]["result"] = "changed"  # a copy: the verdicts themselves stay as they were
    assert verdicts.spf.result != "changed"
