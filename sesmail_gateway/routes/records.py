"""The raw record layout of routing rules, and DynamoDB typed JSON.

A rule is stored as the seed system's DynamoDB table holds it: PK
``ROUTE#<pattern>``, SK ``RULE#v1``, ``entity_type`` ``ROUTE``, and the
actions in either of two layouts, the original single ``action`` +
``target`` pair or the newer ``actions`` list of ``{"type", "target"}``
maps. Records here are plain Python values (str, bool, int, float, list,
dict, set, bytes); ``to_typed``/``from_typed`` convert them to and from
the typed JSON that ``aws dynamodb scan`` prints.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, DecimalException
from typing import Any

from boto3.dynamodb.types import DYNAMODB_CONTEXT, Binary, TypeDeserializer, TypeSerializer

from sesmail_gateway.routes import KNOWN_ACTIONS, SPAM_SETTINGS, Action, Rule
from sesmail_gateway.scan.lists import check_sender_entries

ROUTE_PREFIX = "ROUTE#"
RULE_SK = "RULE#v1"
ENTITY_TYPE = "ROUTE"
# The attributes `--json` listings show, in this order.
PUBLIC_KEYS = ("recipient", "actions", "enabled", "description", "created_at", "updated_at")
# Optional scan attributes (DESIGN 3), written and shown only when set.
SCAN_KEYS = ("spam", "allow_from", "block_from")
# Actions that mean nothing without somewhere to deliver to.
TARGET_REQUIRED = {"forward-to-gmail": "a Gmail address", "maildir": "a Maildir path"}

Item = dict[str, Any]

_DOMAIN = r"(?:[\w-]+\.)*[\w-]+"
_PATTERN = re.compile(rf"\*|\*@{_DOMAIN}|[^\s@+*\"]+(?:\+[^\s@*\"]*)?@{_DOMAIN}")


# --- patterns and keys ------------------------------------------------------


def normalise_pattern(pattern: str) -> str:
    """Lower-case and validate a rule pattern; ValueError names the accepted forms."""
    text = pattern.strip().lower()
    if not _PATTERN.fullmatch(text):
        raise ValueError(
            f"bad route pattern {pattern!r}: expected *, *@domain, user@domain or user+tag@domain"
        )
    return text


def route_key(pattern: str) -> Item:
    """The primary key of the rule stored under ``pattern``."""
    return {"PK": ROUTE_PREFIX + pattern, "SK": RULE_SK}


def is_route_item(item: Mapping[str, Any]) -> bool:
    """True for a routing-rule record (other kinds share the table)."""
    pk = item.get("PK")
    return isinstance(pk, str) and pk.startswith(ROUTE_PREFIX) and item.get("SK") == RULE_SK


def utc_now() -> str:
    """The current time as ISO-8601 UTC, the form ``created_at``/``updated_at`` use."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamped(rule: Rule, *, stored_created_at: str | None, now: str) -> Rule:
    """The rule as a store writes it: ``created_at`` kept from the stored record, ``updated_at`` now."""
    return replace(rule, created_at=stored_created_at or rule.created_at or now, updated_at=now)


def check_actions(actions: Sequence[Action]) -> None:
    """Reject what an operator may not create: no action, unknown types, missing targets."""
    if not actions:
        raise ValueError("a route needs at least one --action")
    for action in actions:
        if not action.known:
            raise ValueError(f"unknown action {action.type!r}: expected one of {', '.join(KNOWN_ACTIONS)}")
        needed = TARGET_REQUIRED.get(action.type)
        if needed and not action.target:
            raise ValueError(f"action {action.type} needs --target ({needed})")
        if action.type == "forward-to-gmail" and "@" not in action.target:
            raise ValueError(f"forward-to-gmail target must be an address, got {action.target!r}")


# --- rule <-> record --------------------------------------------------------


def rule_to_item(rule: Rule) -> Item:
    """The record for ``rule``: the ``actions`` list, plus ``action``/``target`` for one action.

    The single pair is written too so readers of the old layout keep working.
    """
    item: Item = {
        **route_key(rule.pattern),
        "entity_type": ENTITY_TYPE,
        "recipient": rule.pattern,
        "enabled": rule.enabled,
        "actions": [{"type": a.type, "target": a.target} for a in rule.actions],
        "description": rule.description,
        "created_at": rule.created_at,
        "updated_at": rule.updated_at,
    }
    if len(rule.actions) == 1:
        item["action"] = rule.actions[0].type
        item["target"] = rule.actions[0].target
    if rule.spam:
        item["spam"] = rule.spam
    for key, entries in (("allow_from", rule.allow_from), ("block_from", rule.block_from)):
        if entries:
            item[key] = list(entries)
    return item


def item_to_rule(item: Mapping[str, Any]) -> Rule:
    """Read a route record in either layout; a non-empty ``actions`` list wins over ``action``.

    Raises ValueError for a record that is not a usable rule.
    """
    pk = item.get("PK")
    if not isinstance(pk, str) or not pk.startswith(ROUTE_PREFIX):
        raise ValueError(f"not a route record: PK {pk!r}")
    return Rule(
        pattern=normalise_pattern(pk[len(ROUTE_PREFIX):]),
        actions=_read_actions(item),
        enabled=_read_enabled(item.get("enabled")),
        description=_read_text(item.get("description")),
        created_at=_read_text(item.get("created_at")),
        updated_at=_read_text(item.get("updated_at")),
        spam=read_spam(item.get("spam")),
        allow_from=read_sender_list("allow_from", item.get("allow_from")),
        block_from=read_sender_list("block_from", item.get("block_from")),
    )


def public_fields(rule: Rule) -> Item:
    """The rule as `--json` shows it: the record's own attribute names."""
    item = rule_to_item(rule)
    return {key: item[key] for key in PUBLIC_KEYS} | {key: item[key] for key in SCAN_KEYS if key in item}


def canonical_item(item: Item) -> Item:
    """An imported record as it must be stored: route records validated, PK lower-cased.

    Lookups use lower-case keys, so a mixed-case PK would never match and
    could not even be deleted by pattern.
    """
    if not is_route_item(item):
        return item
    return {**item, "PK": ROUTE_PREFIX + item_to_rule(item).pattern}


def _read_actions(item: Mapping[str, Any]) -> tuple[Action, ...]:
    listed = item.get("actions")
    if listed is not None and not isinstance(listed, list):
        raise ValueError(f"actions: expected a list, got {listed!r}")
    if listed:
        return tuple(_read_action(entry, index) for index, entry in enumerate(listed))
    single = item.get("action")
    if isinstance(single, str) and single:
        return (Action(single, _read_text(item.get("target"))),)
    raise ValueError("no actions: neither an actions list nor an action attribute")


def read_spam(value: object) -> str:
    """The ``spam`` attribute: "" (absent: the default policy), "label" or "off"."""
    if value is None or value == "":
        return ""
    if isinstance(value, str) and value.lower() in SPAM_SETTINGS:
        return value.lower()
    raise ValueError(f"spam: expected one of {', '.join(SPAM_SETTINGS)}, got {value!r}")


def read_sender_list(key: str, value: object) -> tuple[str, ...]:
    """``allow_from``/``block_from``: a list (or string set) of entries, normalised."""
    if value is None:
        return ()
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key}: expected a list of addresses, @domains or dmarc:domains, got {value!r}")
    try:
        entries = check_sender_entries(sorted(value) if isinstance(value, (set, frozenset)) else value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    return tuple(dict.fromkeys(entries))


def _read_action(entry: object, index: int) -> Action:
    if not isinstance(entry, Mapping) or not isinstance(entry.get("type"), str) or not entry["type"]:
        raise ValueError(f"actions[{index}]: expected a map with a type, got {entry!r}")
    return Action(entry["type"], _read_text(entry.get("target")))


def _read_enabled(value: object) -> bool:
    # A record without the attribute predates it, when every rule was live.
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"enabled: expected true or false, got {value!r}")


def _read_text(value: object) -> str:
    return "" if value is None else str(value)


# --- DynamoDB typed JSON ----------------------------------------------------

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_typed(item: Mapping[str, Any]) -> dict[str, Any]:
    """A plain record as JSON-ready typed values (``{"S": ...}``, ``{"N": "1"}``, ...)."""
    try:
        return {key: _json_ready(_serializer.serialize(_decimals(value))) for key, value in item.items()}
    except (TypeError, ArithmeticError) as exc:
        raise ValueError(f"cannot express as DynamoDB values: {exc}") from None


def from_typed(typed: object, where: str = "item") -> Item:
    """Typed JSON back to a plain record: numbers become int/float, binaries bytes.

    Raises ValueError naming the attribute when a value is malformed, since
    boto3's deserializer accepts some malformed input and fails obscurely on the rest.
    """
    if not isinstance(typed, dict):
        raise ValueError(f"{where}: expected a map of attributes, got {typed!r}")
    return {
        str(key): _plain(_deserializer.deserialize(_checked(value, f"{where}.{key}")))
        for key, value in typed.items()
    }


def to_wire(item: Mapping[str, Any]) -> dict[str, Any]:
    """A plain record as the DynamoDB API takes it (binaries stay bytes)."""
    try:
        return {key: _serializer.serialize(_decimals(value)) for key, value in item.items()}
    except (TypeError, ArithmeticError) as exc:
        raise ValueError(f"cannot express as DynamoDB values: {exc}") from None


def from_wire(typed: Mapping[str, Any]) -> Item:
    """A record as the DynamoDB API returns it, back to plain values."""
    return {str(key): _plain(_deserializer.deserialize(value)) for key, value in typed.items()}


def scan_document(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Exactly the shape ``aws dynamodb scan`` prints."""
    return {"Items": [to_typed(item) for item in items], "Count": len(items), "ScannedCount": len(items)}


def parse_scan_document(document: object) -> list[Item]:
    """The plain records of a scan document; each must have string PK and SK."""
    if not isinstance(document, dict) or not isinstance(document.get("Items"), list):
        raise ValueError('expected the JSON that "aws dynamodb scan" prints: {"Items": [...], ...}')
    items = [from_typed(typed, f"Items[{index}]") for index, typed in enumerate(document["Items"])]
    for index, item in enumerate(items):
        for key in ("PK", "SK"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise ValueError(f"Items[{index}]: missing string attribute {key}")
    return items


def _checked(value: object, where: str) -> dict[str, Any]:
    """One typed value, validated, with base64 binaries decoded as boto3 expects."""
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"{where}: expected one typed value such as {{\"S\": \"text\"}}, got {value!r}")
    ((kind, inner),) = value.items()
    if kind in ("L", "M"):
        return {kind: _checked_children(kind, inner, where)}
    if kind in ("SS", "NS", "BS"):
        if not isinstance(inner, list):
            raise ValueError(f"{where}: {kind} expects a list, got {inner!r}")
        return {kind: [_checked_leaf(kind[0], entry, where) for entry in inner]}
    if kind in ("S", "N", "B", "BOOL", "NULL"):
        return {kind: _checked_leaf(kind, inner, where)}
    raise ValueError(f"{where}: unknown DynamoDB type {kind!r}")


def _checked_children(kind: str, inner: object, where: str) -> object:
    if kind == "L" and isinstance(inner, list):
        return [_checked(entry, f"{where}[{index}]") for index, entry in enumerate(inner)]
    if kind == "M" and isinstance(inner, dict):
        return {key: _checked(entry, f"{where}.{key}") for key, entry in inner.items()}
    raise ValueError(f"{where}: {kind} expects a {'list' if kind == 'L' else 'map'}, got {inner!r}")


def _checked_leaf(kind: str, inner: object, where: str) -> object:
    if kind == "S" and isinstance(inner, str):
        return inner
    if kind == "N" and isinstance(inner, str) and _is_number(inner):
        return inner
    if kind == "B" and isinstance(inner, str):
        try:
            return base64.b64decode(inner, validate=True)
        except binascii.Error:
            pass
    if kind == "BOOL" and isinstance(inner, bool):
        return inner
    if kind == "NULL" and inner is True:
        return inner
    raise ValueError(f"{where}: not a valid {kind} value: {inner!r}")


def _is_number(text: str) -> bool:
    """A number DynamoDB can hold: 38 significant digits, exponent within its range
    (boto3's deserializer raises Inexact or Overflow on anything else)."""
    try:
        return bool(DYNAMODB_CONTEXT.create_decimal(text).is_finite())
    except DecimalException:
        return False


def _map_leaves(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` with ``leaf`` applied to everything that is not a list, tuple, map or set."""
    if isinstance(value, (list, tuple)):
        return [_map_leaves(entry, leaf) for entry in value]
    if isinstance(value, dict):
        return {key: _map_leaves(entry, leaf) for key, entry in value.items()}
    if isinstance(value, (set, frozenset)):
        return {_map_leaves(entry, leaf) for entry in value}
    return leaf(value)


def _plain(value: Any) -> Any:
    """Decimals → int/float and Binary → bytes, so records are ordinary JSON-able values."""
    return _map_leaves(value, _plain_leaf)


def _plain_leaf(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Binary):
        return bytes(value.value)
    return value


def _decimals(value: Any) -> Any:
    """Floats → Decimal, which boto3's serializer insists on."""
    return _map_leaves(value, lambda leaf: Decimal(repr(leaf)) if isinstance(leaf, float) else leaf)


def _json_ready(typed: Any) -> Any:
    """Binaries in serialized values → base64 text, as the AWS CLI prints them."""
    if not isinstance(typed, dict):
        return typed
    ((kind, inner),) = typed.items()
    if kind == "B":
        return {kind: base64.b64encode(inner).decode("ascii")}
    if kind == "BS":
        return {kind: [base64.b64encode(entry).decode("ascii") for entry in inner]}
    if kind == "L":
        return {kind: [_json_ready(entry) for entry in inner]}
    if kind == "M":
        return {kind: {key: _json_ready(entry) for key, entry in inner.items()}}
    return typed
