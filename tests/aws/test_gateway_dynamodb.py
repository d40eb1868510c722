"""The real gateway daemon routing RCPT through a DynamoDB table in moto server, over real SMTP."""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator

import pytest

from tests.aws.motoserver import Moto, start_moto, stop_moto
from tests.conftest import Gateway, wait_for

MESSAGE = b"From: s@elsewhere.test\r\nSubject: routed by dynamodb\r\n\r\nbody\r\n"


@pytest.fixture
def own_moto(moto: Moto) -> Iterator[Moto]:
    """A second moto server (same state as the session's) that a test may stop and restart."""
    server = start_moto()
    yield server
    stop_moto(server)


def put_rule(moto: Moto, table: str, pattern: str, **attributes: dict[str, object]) -> None:
    item = {"PK": {"S": f"ROUTE#{pattern}"}, "SK": {"S": "RULE#v1"}, "entity_type": {"S": "ROUTE"},
            "recipient": {"S": pattern}, "enabled": {"BOOL": True}, **attributes}
    moto.client("dynamodb").put_item(TableName=table, Item=item)


def rcpt(gateway: Gateway, address: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail("sender@elsewhere.test")
        return client.rcpt(address)


def test_rcpt_routed_by_rules_in_both_layouts_and_changes_seen_after_cache_seconds(
    make_gateway: Callable[..., Gateway], moto: Moto, rule_table: str
) -> None:
    put_rule(moto, rule_table, "alice@example.test", action={"S": "maildir"}, target={"S": "alice"})
    put_rule(moto, rule_table, "*@example.test", actions={"L": [
        {"M": {"type": {"S": "maildir"}, "target": {"S": "team1"}}},
        {"M": {"type": {"S": "maildir"}, "target": {"S": "team2"}}},
    ]})
    gateway = make_gateway({"rules": {"url": f"dynamodb://{rule_table}", "cache_seconds": 1},
                            "aws": moto.aws_section})
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=30) as client:
        client.sendmail("sender@elsewhere.test", ["alice@example.test", "bob@example.test"], MESSAGE)
    for folder in ("alice", "team1", "team2"):
        assert len(gateway.wait_delivered(1, gateway.data_dir / folder)) == 1

    # Changed behind the gateway's back: honoured once the cached answer expires.
    moto.client("dynamodb").delete_item(TableName=rule_table, Key={"PK": {"S": "ROUTE#*@example.test"},
                                                                    "SK": {"S": "RULE#v1"}})
    assert wait_for(lambda: rcpt(gateway, "bob@example.test")[0] == 550, timeout=10)
    assert rcpt(gateway, "alice@example.test")[0] == 250


def test_table_unreachable_is_451_and_the_retry_succeeds_once_it_is_back(
    make_gateway: Callable[..., Gateway], own_moto: Moto, rule_table: str
) -> None:
    put_rule(own_moto, rule_table, "*@example.test", action={"S": "maildir"}, target={"S": "inbox"})
    gateway = make_gateway({"rules": {"url": f"dynamodb://{rule_table}", "cache_seconds": 0},
                            "aws": own_moto.aws_section})
    stop_moto(own_moto)
    code, text = rcpt(gateway, "carol@example.test")
    assert (code, text[:5]) == (451, b"4.3.0")
    assert "rule table" in gateway.log()  # the detail goes to the log, not to the client

    restarted = start_moto(own_moto.port)
    try:
        # The sender's retry: the same transaction again, now accepted and delivered.
        with smtplib.SMTP("127.0.0.1", gateway.port, timeout=60) as client:
            client.sendmail("sender@elsewhere.test", ["carol@example.test"], MESSAGE)
        delivered = gateway.wait_delivered(1, gateway.data_dir / "inbox")
        assert b"routed by dynamodb" in delivered[0]
    finally:
        stop_moto(restarted)
