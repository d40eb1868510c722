"""SES SMTP credentials from `SMTP_USER#<name>` records, driven by the table's stream.

A record written with ``status = "pending"`` (``sesmail-gateway smtp-users create``
or a hand-written ``put-item``) gets an IAM user ``ses-smtp-user-<name>-<timestamp>``
whose one inline policy allows ``ses:SendRawEmail`` only from its
``allowed_senders``, an access key, and the SES SMTP password derived from the
key's secret. The access key id and password are KMS-encrypted into
``encrypted_credentials`` and the record becomes ``active``. Deleting the record
deletes the keys, the policies and the user. ``disabled`` deactivates the keys,
``active`` again reactivates them, ``pending`` again rotates them.

Redelivery and partial failure are safe: the user name is derived from the
record (not from the clock), every step tolerates finding its work done, the
keys are replaced rather than added to, and the record only turns ``active``
under a condition that it is still ``pending``. A record that fails is
reported back (``ReportBatchItemFailures``) so the stream retries from it and,
after the configured attempts, sends it to the dead-letter queue.

This module is deployed on its own: it imports nothing else from the package.
Environment: ``TABLE_NAME``, ``KMS_KEY_ID``, ``PERMISSIONS_BOUNDARY_ARN`` (the
users' permissions boundary), ``AWS_REGION`` (set by Lambda).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

PK_PREFIX = "SMTP_USER#"
SK_VALUE = "CREDENTIALS#v1"
USER_PREFIX = "ses-smtp-user-"
POLICY_NAME = "ses-smtp-send"
IAM_NAME_MAX = 64

_log = logging.getLogger("sesmail.lambda.credential_manager")


# --- The SES SMTP password -------------------------------------------------------------------

# Constants of AWS's documented conversion ("Obtaining Amazon SES SMTP credentials
# by converting existing AWS credentials"): a SigV4 signing key for a fixed date,
# the region and the "ses" service, used to sign "SendRawEmail", prefixed by version 4.
_SMTP_DATE = "11111111"
_SMTP_SERVICE = "ses"
_SMTP_TERMINAL = "aws4_request"
_SMTP_MESSAGE = "SendRawEmail"
_SMTP_VERSION = b"\x04"


def _sign(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def smtp_password(secret_access_key: str, region: str) -> str:
    """The SES SMTP password for an IAM secret access key in ``region``."""
    signature = _sign(("AWS4" + secret_access_key).encode("utf-8"), _SMTP_DATE)
    for part in (region, _SMTP_SERVICE, _SMTP_TERMINAL, _SMTP_MESSAGE):
        signature = _sign(signature, part)
    return base64.b64encode(_SMTP_VERSION + signature).decode("ascii")


# --- Records -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpUser:
    """What the function needs from one `SMTP_USER#` record image."""

    name: str
    status: str
    allowed_senders: tuple[str, ...]
    created_at: str
    iam_user_name: str

    @classmethod
    def from_image(cls, image: dict[str, Any], fallback_time: float) -> SmtpUser:
        pk = _plain(image.get("PK"))
        if not isinstance(pk, str) or not pk.startswith(PK_PREFIX):
            raise ValueError(f"not an SMTP user record: {pk!r}")
        name = pk[len(PK_PREFIX):]
        created_at = _plain(image.get("created_at")) or datetime.fromtimestamp(fallback_time, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        senders = _plain(image.get("allowed_senders")) or []
        stored_user = _plain(image.get("iam_user_name"))
        return cls(
            name=name,
            status=str(_plain(image.get("status")) or ""),
            allowed_senders=tuple(sorted(str(s) for s in senders)),
            created_at=str(created_at),
            iam_user_name=str(stored_user) if stored_user else iam_user_name(name, str(created_at)),
        )

    @property
    def key(self) -> dict[str, Any]:
        return {"PK": {"S": PK_PREFIX + self.name}, "SK": {"S": SK_VALUE}}


def _plain(value: Any) -> Any:
    """One DynamoDB-typed attribute value as plain Python (S, N, BOOL, SS, L of S)."""
    if not isinstance(value, dict) or len(value) != 1:
        return None
    (kind, inner), = value.items()
    if kind in ("S", "N", "BOOL"):
        return inner
    if kind == "SS":
        return list(inner)
    if kind == "L":
        return [_plain(v) for v in inner]
    return None


def iam_user_name(name: str, created_at: str) -> str:
    """``ses-smtp-user-<name>-<timestamp>``, the same for every delivery of one record.

    The timestamp comes from the record's ``created_at``, so a retried or
    redelivered event finds the user an earlier attempt created.
    """
    stamp = re.sub(r"\D", "", created_at)[:14] or "0"
    safe = re.sub(r"[^A-Za-z0-9+=,.@_-]", "-", name)
    room = IAM_NAME_MAX - len(USER_PREFIX) - len(stamp) - 1
    return f"{USER_PREFIX}{safe[:room]}-{stamp}"


def send_policy(allowed_senders: tuple[str, ...]) -> dict[str, Any]:
    """Sending through SES only with a From address in ``allowed_senders``."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "SendOnlyAsAllowedSenders",
                "Effect": "Allow",
                "Action": ["ses:SendRawEmail"],
                "Resource": "*",
                "Condition": {"StringEquals": {"ses:FromAddress": list(allowed_senders)}},
            }
        ],
    }


# --- Steps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clients:
    """Every AWS client the function uses, injected so tests pass their own."""

    iam: Any
    kms: Any
    dynamodb: Any
    table_name: str
    kms_key_id: str
    region: str
    permissions_boundary: str = ""  # every user is created under it when set


def _ignore(client: Any, code: str, call: Callable[[], Any]) -> Any:
    """Run ``call``; an error with ``code`` means the work is already done."""
    try:
        return call()
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != code:
            raise
        return None


def _access_keys(clients: Clients, user_name: str) -> Iterator[str]:
    response = _ignore(clients.iam, "NoSuchEntity", partial(clients.iam.list_access_keys, UserName=user_name))
    for key in (response or {}).get("AccessKeyMetadata", []):
        yield key["AccessKeyId"]


def ensure_user(clients: Clients, user: SmtpUser) -> str:
    """Create (or find) the IAM user; its ARN."""
    iam = clients.iam
    tags = [{"Key": "sesmail-gateway:smtp-user", "Value": user.name}]
    boundary = {"PermissionsBoundary": clients.permissions_boundary} if clients.permissions_boundary else {}
    _ignore(iam, "EntityAlreadyExists", partial(iam.create_user, UserName=user.iam_user_name, Tags=tags, **boundary))
    arn: str = iam.get_user(UserName=user.iam_user_name)["User"]["Arn"]
    return arn


def put_send_policy(clients: Clients, user: SmtpUser) -> None:
    if not user.allowed_senders:
        raise ValueError(f"SMTP user {user.name!r} has no allowed_senders")
    clients.iam.put_user_policy(
        UserName=user.iam_user_name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(send_policy(user.allowed_senders))
    )


def replace_access_key(clients: Clients, user: SmtpUser) -> tuple[str, str]:
    """Delete whatever keys an earlier attempt left (their secrets are lost) and create one."""
    for key_id in list(_access_keys(clients, user.iam_user_name)):
        clients.iam.delete_access_key(UserName=user.iam_user_name, AccessKeyId=key_id)
    key = clients.iam.create_access_key(UserName=user.iam_user_name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def encrypt_credentials(clients: Clients, access_key_id: str, secret: str) -> str:
    """``{"access_key_id", "smtp_password"}`` as base64 KMS ciphertext (the seed's layout)."""
    plaintext = json.dumps({"access_key_id": access_key_id, "smtp_password": smtp_password(secret, clients.region)})
    blob = clients.kms.encrypt(KeyId=clients.kms_key_id, Plaintext=plaintext.encode())["CiphertextBlob"]
    return base64.b64encode(blob).decode("ascii")


def mark_active(clients: Clients, user: SmtpUser, user_arn: str, encrypted: str) -> bool:
    """Store the credentials if the record is still pending; False when it no longer is."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        clients.dynamodb.update_item(
            TableName=clients.table_name,
            Key=user.key,
            UpdateExpression=(
                "SET #status = :active, iam_user_name = :user, iam_user_arn = :arn, "
                "encrypted_credentials = :creds, updated_at = :now"
            ),
            ConditionExpression="#status = :pending",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={
                ":active": {"S": "active"},
                ":pending": {"S": "pending"},
                ":user": {"S": user.iam_user_name},
                ":arn": {"S": user_arn},
                ":creds": {"S": encrypted},
                ":now": {"S": now},
            },
        )
    except clients.dynamodb.exceptions.ConditionalCheckFailedException:
        return False
    return True


def still_pending(clients: Clients, user: SmtpUser) -> bool:
    item = clients.dynamodb.get_item(TableName=clients.table_name, Key=user.key, ConsistentRead=True).get("Item")
    return item is not None and _plain(item.get("status")) == "pending"


def delete_user(clients: Clients, user_name: str) -> None:
    """Keys, inline and attached policies, then the user; each step tolerates being done."""
    iam = clients.iam
    for key_id in list(_access_keys(clients, user_name)):
        _ignore(iam, "NoSuchEntity", partial(iam.delete_access_key, UserName=user_name, AccessKeyId=key_id))
    policies = _ignore(iam, "NoSuchEntity", partial(iam.list_user_policies, UserName=user_name)) or {}
    for name in policies.get("PolicyNames", []):
        _ignore(iam, "NoSuchEntity", partial(iam.delete_user_policy, UserName=user_name, PolicyName=name))
    attached = _ignore(iam, "NoSuchEntity", partial(iam.list_attached_user_policies, UserName=user_name)) or {}
    for policy in attached.get("AttachedPolicies", []):
        arn = policy["PolicyArn"]
        _ignore(iam, "NoSuchEntity", partial(iam.detach_user_policy, UserName=user_name, PolicyArn=arn))
    _ignore(iam, "NoSuchEntity", partial(iam.delete_user, UserName=user_name))


def set_keys_status(clients: Clients, user_name: str, status: str) -> None:
    for key_id in list(_access_keys(clients, user_name)):
        clients.iam.update_access_key(UserName=user_name, AccessKeyId=key_id, Status=status)


# --- Events --------------------------------------------------------------------------------------


def provision(clients: Clients, user: SmtpUser) -> str:
    """pending → IAM user, policy, key, encrypted password, active. Returns what happened."""
    if not still_pending(clients, user):
        return "skipped"  # redelivered after an earlier attempt finished, or deleted since
    user_arn = ensure_user(clients, user)
    put_send_policy(clients, user)
    access_key_id, secret = replace_access_key(clients, user)
    encrypted = encrypt_credentials(clients, access_key_id, secret)
    if mark_active(clients, user, user_arn, encrypted):
        return "created"
    return "skipped"  # deleted meanwhile: its REMOVE event deletes the user


def handle_record(clients: Clients, record: dict[str, Any]) -> str:
    """One stream record; returns the outcome for the log."""
    stream = record.get("dynamodb", {})
    if _plain(stream.get("Keys", {}).get("PK")) is None or not str(_plain(stream["Keys"]["PK"])).startswith(PK_PREFIX):
        return "ignored"
    when = float(stream.get("ApproximateCreationDateTime") or time.time())
    event = record.get("eventName")
    if event == "REMOVE":
        old = SmtpUser.from_image(stream.get("OldImage") or stream["Keys"], when)
        delete_user(clients, old.iam_user_name)
        return "deleted"
    new = SmtpUser.from_image(stream.get("NewImage", {}), when)
    old_status = _plain(stream.get("OldImage", {}).get("status")) if stream.get("OldImage") else None
    if new.status == "pending":
        return provision(clients, new)
    if new.status == "disabled" and old_status != "disabled":
        set_keys_status(clients, new.iam_user_name, "Inactive")
        return "disabled"
    if new.status == "active" and old_status == "disabled":
        set_keys_status(clients, new.iam_user_name, "Active")
        return "enabled"
    return "unchanged"


def handle(event: dict[str, Any], clients: Clients) -> dict[str, Any]:
    """A batch of stream records, in order; stops at the first failure and reports it."""
    for record in event.get("Records", []):
        name = str(_plain(record.get("dynamodb", {}).get("Keys", {}).get("PK")) or "")[len(PK_PREFIX):]
        try:
            outcome = handle_record(clients, record)
        except Exception as exc:  # every failure goes back to the stream: retry, then the DLQ
            _log_line("failed", name, record, error=type(exc).__name__)
            sequence = record.get("dynamodb", {}).get("SequenceNumber", "")
            return {"batchItemFailures": [{"itemIdentifier": sequence}]}
        _log_line(outcome, name, record)
    return {"batchItemFailures": []}


def _log_line(outcome: str, name: str, record: dict[str, Any], **fields: Any) -> None:
    # Names and outcomes only: keys, secrets and passwords never reach the log.
    line = {"event": "smtp_user", "outcome": outcome, "name": name, "stream_event": record.get("eventName"), **fields}
    _log.info(json.dumps(line, separators=(",", ":")))


def clients_from_environment() -> Clients:
    import boto3  # provided by the Lambda runtime; imported here so tests inject their own

    region = os.environ["AWS_REGION"]
    return Clients(
        iam=boto3.client("iam"),
        kms=boto3.client("kms", region_name=region),
        dynamodb=boto3.client("dynamodb", region_name=region),
        table_name=os.environ["TABLE_NAME"],
        kms_key_id=os.environ["KMS_KEY_ID"],
        region=os.environ.get("SMTP_REGION") or region,
        permissions_boundary=os.environ.get("PERMISSIONS_BOUNDARY_ARN", ""),
    )


_clients: Clients | None = None


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    """Lambda entry point (DynamoDB stream, ReportBatchItemFailures)."""
    global _clients
    logging.getLogger().setLevel(logging.INFO)
    if _clients is None:
        _clients = clients_from_environment()
    return handle(event, _clients)
