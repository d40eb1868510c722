"""Route records: patterns, both action layouts, typed JSON, the scan document."""

from __future__ import annotations

from typing import Any

import pytest

from sesmail_gateway.routes import Action, Rule
from sesmail_gateway.routes.records import (
    canonical_item,
    check_actions,
    from_typed,
    item_to_rule,
    normalise_pattern,
    parse_scan_document,
    public_fields,
    rule_to_item,
    scan_document,
    stamped,
    to_typed,
)

GMAIL = Action("forward-to-gmail", "me@gmail.com")


# --- patterns ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("*", "*"),
        ("*@Example.TEST", "*@example.test"),
        ("  Alice@example.test ", "alice@example.test"),
        ("alice+News@example.test", "alice+news@example.test"),
        ("first.last@sub.example.test", "first.last@sub.example.test"),
    ],
)
def test_valid_patterns_are_lower_cased(given: str, expected: str) -> None:
    assert normalise_pattern(given) == expected


@pytest.mark.parametrize(
    "bad", ["", "alice", "@example.test", "alice@", "a b@example.test", "*alice@example.test",
            "alice@*", "a@b@example.test", "*@", "alice@example.test.", "+tag@example.test"],
)
def test_invalid_patterns_raise_a_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match=r"expected \*, \*@domain, user@domain or user\+tag@domain"):
        normalise_pattern(bad)


# --- rule <-> record --------------------------------------------------------


def test_single_action_is_written_in_both_layouts() -> None:
    rule = Rule("alice@example.test", (GMAIL,), description="Alice", created_at="c", updated_at="u")
    assert rule_to_item(rule) == {
        "PK": "ROUTE#alice@example.test", "SK": "RULE#v1", "entity_type": "ROUTE",
        "recipient": "alice@example.test", "enabled": True,
        "actions": [{"type": "forward-to-gmail", "target": "me@gmail.com"}],
        "action": "forward-to-gmail", "target": "me@gmail.com",
        "description": "Alice", "created_at": "c", "updated_at": "u",
    }


def test_several_actions_are_written_only_as_a_list() -> None:
    item = rule_to_item(Rule("*@example.test", (GMAIL, Action("store"))))
    assert item["actions"] == [{"type": "forward-to-gmail", "target": "me@gmail.com"},
                               {"type": "store", "target": ""}]
    assert "action" not in item and "target" not in item


def test_old_single_action_layout_is_read() -> None:
    rule = item_to_rule({"PK": "ROUTE#bob@example.test", "SK": "RULE#v1", "action": "bounce", "enabled": False})
    assert rule.pattern == "bob@example.test"
    assert rule.actions == (Action("bounce", ""),)
    assert rule.enabled is False


def test_actions_list_wins_over_the_old_pair() -> None:
    item = {"PK": "ROUTE#*", "SK": "RULE#v1", "action": "bounce", "target": "",
            "actions": [{"type": "maildir", "target": "Maildir"}, {"type": "store"}]}
    assert item_to_rule(item).actions == (Action("maildir", "Maildir"), Action("store", ""))


def test_record_round_trips_through_a_rule() -> None:
    rule = Rule("a+b@example.test", (GMAIL, Action("maildir", "/srv/m")), enabled=False,
                description="d", created_at="2024-01-01T00:00:00Z", updated_at="2024-02-01T00:00:00Z")
    assert item_to_rule(rule_to_item(rule)) == rule


def test_missing_enabled_means_enabled_and_string_booleans_are_read() -> None:
    base = {"PK": "ROUTE#*", "SK": "RULE#v1", "action": "store"}
    assert item_to_rule(base).enabled is True
    assert item_to_rule(base | {"enabled": "FALSE"}).enabled is False


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "no actions"),
        ({"actions": "store"}, "actions: expected a list"),
        ({"actions": [{"target": "x"}]}, r"actions\[0\]"),
        ({"action": "store", "enabled": "maybe"}, "enabled"),
    ],
)
def test_unusable_records_raise(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        item_to_rule({"PK": "ROUTE#*", "SK": "RULE#v1"} | extra)


def test_public_fields_use_attribute_names() -> None:
    fields = public_fields(Rule("*", (Action("store"),)))
    assert list(fields) == ["recipient", "actions", "enabled", "description", "created_at", "updated_at"]


def test_stamped_keeps_the_stored_created_at() -> None:
    rule = Rule("*", (Action("store"),), created_at="old-given", updated_at="old")
    assert stamped(rule, stored_created_at="stored", now="now") == Rule(
        "*", (Action("store"),), created_at="stored", updated_at="now")
    assert stamped(rule, stored_created_at=None, now="now").created_at == "old-given"
    assert stamped(Rule("*", ()), stored_created_at=None, now="now").created_at == "now"


def test_canonical_item_lower_cases_route_keys_only() -> None:
    route = {"PK": "ROUTE#Alice@Example.TEST", "SK": "RULE#v1", "action": "store"}
    other = {"PK": "SMTP_USER#App", "SK": "CREDENTIALS#v1"}
    assert canonical_item(route)["PK"] == "ROUTE#alice@example.test"
    assert canonical_item(other) == other
    with pytest.raises(ValueError, match="bad route pattern"):
        canonical_item({"PK": "ROUTE#nobody", "SK": "RULE#v1", "action": "store"})


@pytest.mark.parametrize(
    ("actions", "message"),
    [
        ([], "at least one --action"),
        ([Action("forward")], "unknown action 'forward'"),
        ([Action("forward-to-gmail")], "needs --target"),
        ([Action("maildir")], "needs --target"),
        ([Action("forward-to-gmail", "not-an-address")], "must be an address"),
    ],
)
def test_check_actions_rejects_what_cannot_be_delivered(actions: list[Action], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_actions(actions)


def test_check_actions_accepts_bounce_and_store_without_target() -> None:
    check_actions([Action("bounce"), Action("store"), GMAIL, Action("maildir", "Maildir")])


# --- typed JSON -------------------------------------------------------------


def test_typed_json_round_trip_keeps_every_kind_of_value() -> None:
    item = {"PK": "X#1", "SK": "Y", "n": 3, "f": 1.5, "b": True, "none": None, "raw": b"\x00\xff",
            "list": ["a", 1], "map": {"k": {"deep": False}}, "tags": {"a", "b"}}
    typed = to_typed(item)
    assert typed["n"] == {"N": "3"}
    assert typed["b"] == {"BOOL": True}
    assert typed["raw"] == {"B": "AP8="}
    assert typed["map"] == {"M": {"k": {"M": {"deep": {"BOOL": False}}}}}
    assert sorted(typed["tags"]["SS"]) == ["a", "b"]
    back = from_typed(typed)
    assert back == item
    assert type(back["n"]) is int and type(back["f"]) is float


@pytest.mark.parametrize(
    "bad",
    [{"S": 5}, {"N": "abc"}, {"N": "NaN"}, {"N": "1" * 40}, {"N": "1e400"}, {"N": "1e-400"},
     {"NS": ["1", "9" * 39]}, {"L": [{"N": "-1e200"}]}, {"X": "y"}, {"S": "a", "N": "1"}, {"L": "x"},
     {"M": ["x"]}, {"B": "!!"}, {"NULL": False}, {"SS": "a"}, "plain"],
)
def test_malformed_typed_values_name_the_attribute(bad: object) -> None:
    with pytest.raises(ValueError, match=r"item\.attr"):
        from_typed({"attr": bad})


def test_scan_document_has_the_aws_cli_shape() -> None:
    items = [{"PK": "ROUTE#*", "SK": "RULE#v1"}, {"PK": "SMTP_USER#a", "SK": "CREDENTIALS#v1"}]
    document = scan_document(items)
    assert document == {"Items": [to_typed(i) for i in items], "Count": 2, "ScannedCount": 2}
    assert parse_scan_document(document) == items


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "aws dynamodb scan"),
        ({"Count": 0}, "aws dynamodb scan"),
        ({"Items": [{"SK": {"S": "x"}}]}, r"Items\[0\]: missing string attribute PK"),
        ({"Items": [{"PK": {"N": "1"}, "SK": {"S": "x"}}]}, r"Items\[0\]: missing string attribute PK"),
        ({"Items": [{"PK": {"S": 1}}]}, r"Items\[0\]\.PK"),
    ],
)
def test_malformed_scan_documents_are_refused(document: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_scan_document(document)
