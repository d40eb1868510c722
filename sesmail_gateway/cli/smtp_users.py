"""``sesmail-gateway smtp-users …``: SES SMTP users, as records for the credential-manager Lambda.

A user is one record in the rule table (``rules.url``; with SQLite the same
database): PK ``SMTP_USER#NAME``, SK ``CREDENTIALS#v1``, ``entity_type``
``SMTP_CREDENTIALS``, ``username``, ``allowed_senders``, ``status``
(``pending`` until the Lambda has made the IAM user and its SES SMTP
password, then ``active``; ``disabled``), timestamps. The Lambda stores
the credentials KMS-encrypted in ``encrypted_credentials``; only
``show --decrypt`` decrypts them, and nothing else ever prints them.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
from collections.abc import Mapping
from contextlib import closing
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sesmail_gateway import aws
from sesmail_gateway.cli.common import CliError, json_flag, load_config, print_json, print_table
from sesmail_gateway.cli.routes import Subparsers
from sesmail_gateway.config import Config
from sesmail_gateway.routes import RouteStore
from sesmail_gateway.routes.factory import open_route_store
from sesmail_gateway.routes.records import utc_now

PREFIX = "SMTP_USER#"
SK = "CREDENTIALS#v1"
ENTITY_TYPE = "SMTP_CREDENTIALS"
PUBLIC_KEYS = ("username", "status", "allowed_senders", "description", "created_at", "updated_at")
# IAM user names: the Lambda makes one per SMTP user.
_NAME = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,64}$")
_ADDRESS = re.compile(r"^(?:[^@\s]+@|@)?[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")


def register(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    group = sub.add_parser("smtp-users", parents=[common], help="manage SES SMTP users",
                           description="SES SMTP users, kept as records for the credential-manager Lambda.")
    leaves = group.add_subparsers(dest="smtp_users_command", metavar="ACTION", required=True)
    create = _leaf(leaves, common, "create", cmd_create, "create a user (the Lambda issues its password)")
    create.add_argument("--allowed-sender", dest="allowed_senders", action="append", required=True,
                        metavar="ADDR", help="an address or @domain the user may send as; repeat for more")
    create.add_argument("--description", default="")
    json_flag(_leaf(leaves, common, "list", cmd_list, "list the users"))
    show = _leaf(leaves, common, "show", cmd_show, "show one user")
    show.add_argument("--decrypt", action="store_true",
                      help="decrypt the credentials with KMS and print the SMTP endpoint, username and password")
    json_flag(show)
    _leaf(leaves, common, "disable", cmd_disable, "disable a user (the Lambda deactivates its keys)")
    _leaf(leaves, common, "delete", cmd_delete, "delete a user (the Lambda deletes its IAM user)")


def _leaf(leaves: Subparsers, common: argparse.ArgumentParser, name: str, handler: Any,
          text: str) -> argparse.ArgumentParser:
    parser = leaves.add_parser(name, parents=[common], help=text, description=text[:1].upper() + text[1:] + ".")
    parser.set_defaults(func=handler)
    if name != "list":
        parser.add_argument("name", metavar="NAME")
    return parser


def user_key(name: str) -> dict[str, str]:
    return {"PK": PREFIX + name, "SK": SK}


def public_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    """What listings show: never ``encrypted_credentials``."""
    fields = {key: item.get(key, "") for key in PUBLIC_KEYS}
    fields["allowed_senders"] = sorted(item.get("allowed_senders") or ())
    fields["has_credentials"] = bool(item.get("encrypted_credentials"))
    return fields


# --- handlers ---------------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    name = _name(args.name)
    senders = sorted({address.strip().lower() for address in args.allowed_senders})
    for address in senders:
        if not _ADDRESS.match(address):
            raise CliError(f"--allowed-sender {address!r}: expected an address or @domain")
    with _store(load_config(args)) as store:
        if store.get_item(user_key(name)) is not None:
            raise CliError(f"smtp user {name} already exists")
        now = utc_now()
        store.put_item({**user_key(name), "entity_type": ENTITY_TYPE, "username": name,
                        "allowed_senders": set(senders), "status": "pending", "description": args.description,
                        "created_at": now, "updated_at": now})
    print(f"created smtp user {name} (pending: the credential manager issues its password)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _store(load_config(args)) as store:
        users = [public_fields(item) for item in store.scan_items()
                 if item.get("entity_type") == ENTITY_TYPE or str(item.get("PK", "")).startswith(PREFIX)]
    users.sort(key=lambda user: str(user["username"]))
    if args.json:
        print_json(users)
        return 0
    print_table(("USERNAME", "STATUS", "ALLOWED SENDERS", "CREATED"),
                [(u["username"], u["status"], ", ".join(u["allowed_senders"]), u["created_at"]) for u in users])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    config = load_config(args)
    with _store(config) as store:
        item = _existing(store, _name(args.name))
    fields = public_fields(item)
    if args.decrypt:
        fields.update(decrypt_credentials(config, item))
    if args.json:
        print_json(fields)
        return 0
    width = max(len(key) for key in fields)
    for key, value in fields.items():
        shown = ", ".join(value) if isinstance(value, list) else value
        print(f"{key.ljust(width)}  {shown}")
    return 0


def cmd_disable(args: argparse.Namespace) -> int:
    name = _name(args.name)
    with _store(load_config(args)) as store:
        item = _existing(store, name)
        if item.get("status") == "disabled":
            print(f"smtp user {name} is already disabled")
            return 0
        store.put_item({**item, "status": "disabled", "updated_at": utc_now()})
    print(f"disabled smtp user {name}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    name = _name(args.name)
    with _store(load_config(args)) as store:
        if not store.delete_item(user_key(name)):
            raise CliError(f"no smtp user {name}")
    print(f"deleted smtp user {name}")
    return 0


# --- credentials ------------------------------------------------------------


def smtp_endpoint(region: str) -> str:
    return f"email-smtp.{region}.amazonaws.com:587"


def decrypt_credentials(config: Config, item: Mapping[str, Any]) -> dict[str, str]:
    """KMS-decrypt ``encrypted_credentials``: the SMTP endpoint, username and password.

    The blob is the KMS ciphertext (binary, or base64 text) of a JSON object
    with ``smtp_username`` (or ``access_key_id``) and ``smtp_password``.
    """
    blob = item.get("encrypted_credentials")
    if not blob:
        raise CliError(f"smtp user {item.get('username')}: no credentials yet (status {item.get('status')})")
    try:
        ciphertext = blob if isinstance(blob, bytes) else base64.b64decode(str(blob), validate=True)
    except binascii.Error:
        raise CliError(f"smtp user {item.get('username')}: encrypted_credentials is not base64") from None
    try:
        kms = aws.client(config.aws, "kms")
        plaintext = kms.decrypt(CiphertextBlob=ciphertext)["Plaintext"]
        region = config.aws.region or kms.meta.region_name
    except ClientError as exc:
        raise CliError(f"kms decrypt: {exc.response.get('Error', {}).get('Code', 'error')}") from None
    except BotoCoreError as exc:
        raise CliError(f"kms decrypt: {exc}") from None
    try:
        secret = json.loads(plaintext)
        username = str(secret.get("smtp_username") or secret["access_key_id"])
        password = str(secret["smtp_password"])
    except (ValueError, KeyError, AttributeError):
        raise CliError(f"smtp user {item.get('username')}: decrypted credentials are not the expected JSON") \
            from None
    return {"smtp_endpoint": smtp_endpoint(region), "smtp_username": username, "smtp_password": password}


# --- helpers ----------------------------------------------------------------


def _store(config: Config) -> closing[RouteStore]:
    return closing(open_route_store(config))


def _name(text: str) -> str:
    if not _NAME.match(text):
        raise CliError(f"bad smtp user name {text!r}: 1-64 of A-Z a-z 0-9 + = , . @ _ -")
    return text


def _existing(store: RouteStore, name: str) -> dict[str, Any]:
    item = store.get_item(user_key(name))
    if item is None:
        raise CliError(f"no smtp user {name}")
    return item
