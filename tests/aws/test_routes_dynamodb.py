"""The DynamoDB rule store against moto server, through real boto3 calls over HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from sesmail_gateway.config import AwsConfig
from sesmail_gateway.routes import Action, RouteStoreError, Rule
from sesmail_gateway.routes.dynamodb import DynamoRouteStore
from sesmail_gateway.routes.resolver import RouteResolver
from tests.aws.motoserver import REGION, Moto
from tests.conftest import free_port


def seed_rules(moto: Moto, table: str) -> None:
    """Rules written with plain boto3 in the seed system's two layouts, plus a record of another kind."""
    client = moto.client("dynamodb")
    client.put_item(TableName=table, Item={  # the original single action + target
        "PK": {"S": "ROUTE#alice@example.test"}, "SK": {"S": "RULE#v1"}, "entity_type": {"S": "ROUTE"},
        "recipient": {"S": "alice@example.test"}, "action": {"S": "forward-to-gmail"},
        "target": {"S": "alice@gmail.com"}, "enabled": {"BOOL": True},
        "created_at": {"S": "2024-01-01T00:00:00Z"}, "updated_at": {"S": "2024-01-01T00:00:00Z"},
        "description": {"S": "old layout"},
    })
    client.put_item(TableName=table, Item={  # the newer actions list
        "PK": {"S": "ROUTE#*@example.test"}, "SK": {"S": "RULE#v1"}, "entity_type": {"S": "ROUTE"},
        "recipient": {"S": "*@example.test"}, "enabled": {"BOOL": True},
        "actions": {"L": [
            {"M": {"type": {"S": "forward-to-gmail"}, "target": {"S": "team1@gmail.com"}}},
            {"M": {"type": {"S": "forward-to-gmail"}, "target": {"S": "team2@gmail.com"}}},
        ]},
    })
    client.put_item(TableName=table, Item={
        "PK": {"S": "ROUTE#bob@example.test"}, "SK": {"S": "RULE#v1"}, "entity_type": {"S": "ROUTE"},
        "recipient": {"S": "bob@example.test"}, "action": {"S": "store"}, "enabled": {"BOOL": False},
    })
    client.put_item(TableName=table, Item={
        "PK": {"S": "SMTP_USER#app"}, "SK": {"S": "CREDENTIALS#v1"}, "entity_type": {"S": "SMTP_CREDENTIALS"},
        "username": {"S": "app"}, "allowed_senders": {"SS": ["app@example.test"]},
    })


def count_calls(store: DynamoRouteStore, operation: str) -> list[str]:
    """Requests that reach the wire for ``operation`` (a botocore event per HTTP send)."""
    seen: list[str] = []
    store.client.meta.events.register(f"before-send.dynamodb.{operation}", lambda **_: seen.append(operation))
    return seen


class _Ok:
    status_code = 200


def script(store: DynamoRouteStore, operation: str, responses: list[dict[str, Any]]) -> None:
    """Answer the next calls of ``operation`` with scripted responses instead of the server
    (moto never throttles, so UnprocessedKeys and throttling errors are scripted here)."""

    def answer(**_: Any) -> tuple[Any, dict[str, Any]] | None:
        if not responses:
            return None
        parsed = responses.pop(0)
        status = _Ok() if "Error" not in parsed else type("Err", (), {"status_code": 400})()
        return status, parsed

    store.client.meta.events.register(f"before-call.dynamodb.{operation}", answer)


def test_rules_in_both_seed_layouts_route_addresses(moto: Moto, rule_table: str) -> None:
    seed_rules(moto, rule_table)
    resolver = RouteResolver(DynamoRouteStore(rule_table, aws_config=moto.aws_config), cache_seconds=0)

    alice = resolver.resolve_sync("Alice+news@Example.test")
    assert alice.level == "plus-stripped"
    assert alice.rule is not None and alice.rule.actions == (Action("forward-to-gmail", "alice@gmail.com"),)
    carol = resolver.resolve_sync("carol@example.test")
    assert carol.level == "domain" and carol.rule is not None
    assert [a.target for a in carol.rule.actions] == ["team1@gmail.com", "team2@gmail.com"]
    bob = resolver.resolve_sync("bob@example.test")  # disabled: the next level answers
    assert bob.level == "domain" and [c.outcome for c in bob.tried] == ["disabled", "matched"]
    assert resolver.resolve_sync("x@other.test").rule is None


def test_one_batch_get_per_uncached_lookup_and_none_when_cached(moto: Moto, rule_table: str) -> None:
    seed_rules(moto, rule_table)
    store = DynamoRouteStore(rule_table, aws_config=moto.aws_config)
    calls = count_calls(store, "*")
    clock = [0.0]
    resolver = RouteResolver(store, cache_seconds=60, clock=lambda: clock[0])

    resolver.resolve_sync("dave+tag@example.test")  # four candidate keys
    assert calls == ["*"]
    resolver.resolve_sync("dave+tag@example.test")  # cached (positive)
    resolver.resolve_sync("nobody@other.test")  # negative, one call
    resolver.resolve_sync("nobody@other.test")  # cached (negative)
    assert len(calls) == 2
    clock[0] = 61.0
    resolver.resolve_sync("nobody@other.test")
    assert len(calls) == 3


def test_rule_changed_behind_the_store_is_seen_after_the_cache_expires(moto: Moto, rule_table: str) -> None:
    seed_rules(moto, rule_table)
    clock = [0.0]
    resolver = RouteResolver(DynamoRouteStore(rule_table, aws_config=moto.aws_config), cache_seconds=60,
                             clock=lambda: clock[0])
    assert resolver.resolve_sync("alice@example.test").level == "exact"
    moto.client("dynamodb").delete_item(TableName=rule_table, Key={"PK": {"S": "ROUTE#alice@example.test"},
                                                                    "SK": {"S": "RULE#v1"}})
    assert resolver.resolve_sync("alice@example.test").level == "exact"  # still cached
    clock[0] = 60.5
    assert resolver.resolve_sync("alice@example.test").level == "domain"


def test_unprocessed_keys_are_asked_again_with_backoff(moto: Moto, rule_table: str) -> None:
    seed_rules(moto, rule_table)
    slept: list[float] = []
    store = DynamoRouteStore(rule_table, aws_config=moto.aws_config, sleep=slept.append)
    keys = [{"PK": {"S": f"ROUTE#{p}"}, "SK": {"S": "RULE#v1"}} for p in ("alice@example.test", "*@example.test")]
    script(store, "BatchGetItem", [
        {"Responses": {rule_table: []}, "UnprocessedKeys": {rule_table: {"Keys": keys}}},
        {"Responses": {rule_table: []}, "UnprocessedKeys": {rule_table: {"Keys": keys[1:]}}},
    ])
    rules = store.get_many(["alice@example.test", "*@example.test"])
    assert set(rules) == {"*@example.test"}  # the third (real) call answered only what was still asked
    assert slept == [0.05, 0.1]


def test_keys_unprocessed_beyond_the_retries_is_a_store_error(moto: Moto, rule_table: str) -> None:
    store = DynamoRouteStore(rule_table, aws_config=moto.aws_config, retries=2, sleep=lambda _: None)
    keys = [{"PK": {"S": "ROUTE#*"}, "SK": {"S": "RULE#v1"}}]
    script(store, "BatchGetItem", [{"Responses": {}, "UnprocessedKeys": {rule_table: {"Keys": keys}}}] * 3)
    with pytest.raises(RouteStoreError, match="unprocessed after 2 retries"):
        store.get_many(["*"])


def test_throttling_missing_table_and_unreachable_endpoint_are_store_errors(moto: Moto, rule_table: str) -> None:
    store = DynamoRouteStore(rule_table, aws_config=moto.aws_config)
    script(store, "BatchGetItem", [{"Error": {"Code": "ProvisionedThroughputExceededException",
                                              "Message": "slow down"}}])
    with pytest.raises(RouteStoreError, match="ProvisionedThroughputExceededException"):
        store.get_many(["*"])
    with pytest.raises(RouteStoreError, match="ResourceNotFoundException"):
        DynamoRouteStore("no-such-table", aws_config=moto.aws_config).get_many(["*"])
    closed = AwsConfig(region=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(RouteStoreError, match="Could not connect"):
        DynamoRouteStore(rule_table, aws_config=closed).get_many(["*"])


def test_put_keeps_created_at_writes_both_layouts_and_leaves_other_records(moto: Moto, rule_table: str) -> None:
    seed_rules(moto, rule_table)
    times = iter(["2026-01-01T00:00:00Z", "2026-02-02T00:00:00Z"])
    store = DynamoRouteStore(rule_table, aws_config=moto.aws_config, now=lambda: next(times))
    store.put(Rule("alice@example.test", (Action("maildir", "alice"),)))
    raw = moto.client("dynamodb").get_item(TableName=rule_table, Key={"PK": {"S": "ROUTE#alice@example.test"},
                                                                       "SK": {"S": "RULE#v1"}})["Item"]
    assert raw["created_at"] == {"S": "2024-01-01T00:00:00Z"}
    assert raw["updated_at"] == {"S": "2026-01-01T00:00:00Z"}
    assert raw["action"] == {"S": "maildir"} and raw["target"] == {"S": "alice"}
    assert raw["actions"] == {"L": [{"M": {"type": {"S": "maildir"}, "target": {"S": "alice"}}}]}

    two = store.put(Rule("alice@example.test", (Action("store"), Action("maildir", "a"))))
    assert two.created_at == "2024-01-01T00:00:00Z"
    raw = moto.client("dynamodb").get_item(TableName=rule_table, Key={"PK": {"S": "ROUTE#alice@example.test"},
                                                                       "SK": {"S": "RULE#v1"}})["Item"]
    assert "action" not in raw  # a replaced record carries no stale single pair

    assert [r.pattern for r in store.list()] == ["*@example.test", "alice@example.test", "bob@example.test"]
    assert store.delete("bob@example.test") and not store.delete("bob@example.test")
    other = [item for item in store.scan_items() if item["PK"] == "SMTP_USER#app"]
    assert other and other[0]["allowed_senders"] == {"app@example.test"}


def test_list_pages_through_the_scan(moto: Moto, rule_table: str) -> None:
    store = DynamoRouteStore(rule_table, aws_config=moto.aws_config, page_size=40)
    items = [{"PK": f"ROUTE#u{i}@example.test", "SK": "RULE#v1", "entity_type": "ROUTE",
              "recipient": f"u{i}@example.test", "action": "store"} for i in range(150)]
    items += [{"PK": f"OTHER#{i}", "SK": "X", "entity_type": "OTHER"} for i in range(30)]
    progress: list[tuple[int, int]] = []
    assert store.put_items(items, progress=lambda done, total: progress.append((done, total))) == 180
    assert progress[0] == (25, 180) and progress[-1] == (180, 180) and len(progress) == 8
    scans = count_calls(store, "Scan")
    assert len(store.list()) == 150
    assert len(scans) >= 5  # 180 records in pages of 40
    assert len(store.scan_items()) == 180
