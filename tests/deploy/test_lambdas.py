"""The two SES Lambdas against moto in server mode, through real boto3 calls.

The credential manager is fed real-shaped DynamoDB stream records (the table's
stream with NEW_AND_OLD_IMAGES), built from the items actually written to the
moto table; the outbound-metrics function is fed SNS notifications carrying SES
event records (tests/deploy/data/ses_events).
"""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from sesmail_gateway.lambdas import credential_manager as cm
from sesmail_gateway.lambdas import outbound_metrics as om
from tests.deploy.conftest import REGION, Aws

TABLE = "ses-mail-email-routing-test"
EVENTS = Path(__file__).parent / "data" / "ses_events"


# --- SMTP password ------------------------------------------------------------------------------

# Known input/output pairs from terraform-provider-aws' test suite for the same conversion
# (internal/service/iam/access_key_test.go, TestSESSMTPPasswordFromSecretKeySigV4), whose
# output authenticates against SES; not derived from this code.
@pytest.mark.parametrize(
    ("region", "secret", "expected"),
    [
        ("eu-central-1", "some+secret+key", "BMXhUYlu5Z3gSXVQORxlVa7XPaz91aGWdfHxvkOZdWZ2"),
        ("eu-central-1", "another+secret+key", "BBbphbrQmrKMx42d1N6+C7VINYEBGI5v9VsZeTxwskfh"),
        ("us-west-1", "some+secret+key", "BH+jbMzper5WwlwUar9E1ySBqHa9whi0GPo+sJ0mVYJj"),
        ("us-west-1", "another+secret+key", "BKVmjjMDFk/qqw8EROW99bjCS65PF8WKvK5bSr4Y6EqF"),
    ],
)
def test_smtp_password_matches_published_vectors(region: str, secret: str, expected: str) -> None:
    assert cm.smtp_password(secret, region) == expected


def test_iam_user_name_is_stable_and_valid() -> None:
    name = cm.iam_user_name("app-sender", "2024-05-06T07:08:09Z")
    assert name == "ses-smtp-user-app-sender-20240506070809"
    assert cm.iam_user_name("app-sender", "2024-05-06T07:08:09Z") == name
    long = cm.iam_user_name("x" * 100 + " bad/chars", "2024-05-06T07:08:09Z")
    assert len(long) == 64 and long.endswith("-20240506070809")


# --- Credential manager -------------------------------------------------------------------------


class Table:
    """The routing table in moto, and stream records made from what it holds."""

    def __init__(self, aws: Aws) -> None:
        self.ddb = aws.client("dynamodb")
        self.ddb.create_table(
            TableName=TABLE, BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "PK", "AttributeType": "S"},
                                  {"AttributeName": "SK", "AttributeType": "S"}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )
        self.sequence = 0

    def key(self, name: str) -> dict[str, Any]:
        return {"PK": {"S": f"SMTP_USER#{name}"}, "SK": {"S": "CREDENTIALS#v1"}}

    def get(self, name: str) -> dict[str, Any] | None:
        item: dict[str, Any] | None = self.ddb.get_item(TableName=TABLE, Key=self.key(name)).get("Item")
        return item

    def put_pending(self, name: str, senders: list[str], *, as_list: bool = False) -> dict[str, Any]:
        item = {**self.key(name), "entity_type": {"S": "SMTP_CREDENTIALS"}, "username": {"S": name},
                "status": {"S": "pending"}, "created_at": {"S": "2024-05-06T07:08:09Z"},
                "allowed_senders": {"L": [{"S": s} for s in senders]} if as_list else {"SS": senders}}
        self.ddb.put_item(TableName=TABLE, Item=item)
        return item

    def record(self, event: str, new: dict[str, Any] | None, old: dict[str, Any] | None) -> dict[str, Any]:
        """A stream record as Lambda receives it from a NEW_AND_OLD_IMAGES stream."""
        self.sequence += 1
        image = new or old or {}
        body: dict[str, Any] = {
            "ApproximateCreationDateTime": 1714979289.0,
            "Keys": {"PK": image["PK"], "SK": image["SK"]},
            "SequenceNumber": f"{self.sequence:021d}",
            "SizeBytes": 200,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        }
        if new is not None:
            body["NewImage"] = new
        if old is not None:
            body["OldImage"] = old
        return {"eventID": f"e{self.sequence}", "eventName": event, "eventVersion": "1.1",
                "eventSource": "aws:dynamodb", "awsRegion": REGION, "dynamodb": body,
                "eventSourceARN": f"arn:aws:dynamodb:{REGION}:123456789012:table/{TABLE}/stream/2024"}


@pytest.fixture
def table(aws: Aws) -> Table:
    return Table(aws)


@pytest.fixture
def clients(aws: Aws, table: Table) -> cm.Clients:
    kms = aws.client("kms")
    iam = aws.client("iam")
    key_id = kms.create_key(Description="smtp credentials")["KeyMetadata"]["KeyId"]
    boundary = iam.create_policy(PolicyName="smtp-user-boundary", PolicyDocument=json.dumps(
        {"Version": "2012-10-17",
         "Statement": [{"Effect": "Allow", "Action": ["ses:SendRawEmail"], "Resource": "*"}]}))["Policy"]["Arn"]
    return cm.Clients(iam=iam, kms=kms, dynamodb=table.ddb, table_name=TABLE,
                      kms_key_id=key_id, region=REGION, permissions_boundary=boundary)


def decrypt(clients: cm.Clients, item: dict[str, Any]) -> dict[str, str]:
    blob = base64.b64decode(item["encrypted_credentials"]["S"])
    result: dict[str, str] = json.loads(clients.kms.decrypt(CiphertextBlob=blob)["Plaintext"])
    return result


def test_pending_record_gets_user_policy_key_and_encrypted_password(
        table: Table, clients: cm.Clients, caplog: pytest.LogCaptureFixture) -> None:
    item = table.put_pending("app-sender", ["app@example.test", "alerts@example.test"])
    caplog.set_level(logging.INFO)
    create_calls: list[dict[str, Any]] = []
    clients.iam.meta.events.register(
        "provide-client-params.iam.CreateUser", lambda params, **_: create_calls.append(dict(params)))
    assert cm.handle({"Records": [table.record("INSERT", item, None)]}, clients) == {"batchItemFailures": []}

    stored = table.get("app-sender")
    assert stored is not None and stored["status"]["S"] == "active"
    user_name = "ses-smtp-user-app-sender-20240506070809"
    assert stored["iam_user_name"]["S"] == user_name
    assert stored["iam_user_arn"]["S"] == clients.iam.get_user(UserName=user_name)["User"]["Arn"]
    # moto keeps a user's boundary but GetUser does not return it: the request sent is checked instead.
    assert [call["PermissionsBoundary"] for call in create_calls] == [clients.permissions_boundary]

    policy = clients.iam.get_user_policy(UserName=user_name, PolicyName=cm.POLICY_NAME)["PolicyDocument"]
    statement = (json.loads(policy) if isinstance(policy, str) else policy)["Statement"][0]
    assert statement["Action"] == ["ses:SendRawEmail"]
    assert statement["Condition"]["StringEquals"]["ses:FromAddress"] == ["alerts@example.test", "app@example.test"]

    keys = clients.iam.list_access_keys(UserName=user_name)["AccessKeyMetadata"]
    assert len(keys) == 1
    credentials = decrypt(clients, stored)
    assert credentials["access_key_id"] == keys[0]["AccessKeyId"]
    assert base64.b64decode(credentials["smtp_password"])[0] == 4 and len(credentials["smtp_password"]) == 44
    # Neither the password nor the key id is in the record in the clear, nor in the log.
    assert credentials["smtp_password"] not in json.dumps(stored)
    assert credentials["smtp_password"] not in caplog.text and keys[0]["AccessKeyId"] not in caplog.text
    assert '"outcome":"created"' in caplog.text


def test_list_layout_of_allowed_senders_is_read(table: Table, clients: cm.Clients) -> None:
    item = table.put_pending("seed-user", ["seed@example.test"], as_list=True)
    cm.handle({"Records": [table.record("INSERT", item, None)]}, clients)
    user_name = cm.iam_user_name("seed-user", "2024-05-06T07:08:09Z")
    policy = clients.iam.get_user_policy(UserName=user_name, PolicyName=cm.POLICY_NAME)["PolicyDocument"]
    statement = (json.loads(policy) if isinstance(policy, str) else policy)["Statement"][0]
    assert statement["Condition"]["StringEquals"]["ses:FromAddress"] == ["seed@example.test"]


def test_redelivered_insert_changes_nothing(table: Table, clients: cm.Clients) -> None:
    item = table.put_pending("app", ["app@example.test"])
    record = table.record("INSERT", item, None)
    cm.handle({"Records": [record]}, clients)
    first = table.get("app")
    assert cm.handle({"Records": [record]}, clients) == {"batchItemFailures": []}
    assert table.get("app") == first
    user_name = cm.iam_user_name("app", "2024-05-06T07:08:09Z")
    assert len(clients.iam.list_access_keys(UserName=user_name)["AccessKeyMetadata"]) == 1


class FailingKms:
    """The real KMS client, except that the next `fail` encrypt calls raise (a scripted outage)."""

    def __init__(self, real: Any, fail: int) -> None:
        self.real, self.fail = real, fail
        self.exceptions = real.exceptions

    def encrypt(self, **kwargs: Any) -> Any:
        if self.fail:
            self.fail -= 1
            raise self.real.exceptions.KMSInternalException(
                {"Error": {"Code": "KMSInternalException", "Message": "scripted"}}, "Encrypt")
        return self.real.encrypt(**kwargs)

    def decrypt(self, **kwargs: Any) -> Any:
        return self.real.decrypt(**kwargs)


def test_partial_failure_is_reported_and_the_retry_finishes_with_one_key(table: Table, clients: cm.Clients) -> None:
    item = table.put_pending("flaky", ["flaky@example.test"])
    other = table.put_pending("after", ["after@example.test"])
    records = [table.record("INSERT", item, None), table.record("INSERT", other, None)]
    broken = cm.Clients(**{**clients.__dict__, "kms": FailingKms(clients.kms, fail=1)})

    result = cm.handle({"Records": records}, broken)
    # The failed record is reported and the batch stops there, so the stream keeps the order.
    assert result == {"batchItemFailures": [{"itemIdentifier": records[0]["dynamodb"]["SequenceNumber"]}]}
    user_name = cm.iam_user_name("flaky", "2024-05-06T07:08:09Z")
    assert len(clients.iam.list_access_keys(UserName=user_name)["AccessKeyMetadata"]) == 1  # key made, secret lost
    assert table.get("flaky")["status"]["S"] == "pending"  # type: ignore[index]
    assert table.get("after")["status"]["S"] == "pending"  # type: ignore[index]

    assert cm.handle({"Records": records}, broken) == {"batchItemFailures": []}
    keys = clients.iam.list_access_keys(UserName=user_name)["AccessKeyMetadata"]
    assert len(keys) == 1
    assert decrypt(clients, table.get("flaky"))["access_key_id"] == keys[0]["AccessKeyId"]  # type: ignore[arg-type]
    assert table.get("after")["status"]["S"] == "active"  # type: ignore[index]


def test_remove_deletes_keys_policies_and_user_and_tolerates_redelivery(table: Table, clients: cm.Clients) -> None:
    item = table.put_pending("gone", ["gone@example.test"])
    cm.handle({"Records": [table.record("INSERT", item, None)]}, clients)
    active = table.get("gone")
    assert active is not None
    user_name = active["iam_user_name"]["S"]
    clients.iam.attach_user_policy(UserName=user_name, PolicyArn=_managed_policy(clients))

    table.ddb.delete_item(TableName=TABLE, Key=table.key("gone"))
    remove = table.record("REMOVE", None, active)
    assert cm.handle({"Records": [remove]}, clients) == {"batchItemFailures": []}
    with pytest.raises(clients.iam.exceptions.NoSuchEntityException):
        clients.iam.get_user(UserName=user_name)
    assert cm.handle({"Records": [remove]}, clients) == {"batchItemFailures": []}


def test_remove_of_a_record_deleted_while_pending_finds_the_user_by_name(table: Table, clients: cm.Clients) -> None:
    item = table.put_pending("early", ["early@example.test"])
    user = cm.SmtpUser.from_image(item, 0)
    cm.ensure_user(clients, user)  # an attempt that got this far, then the record was deleted
    table.ddb.delete_item(TableName=TABLE, Key=table.key("early"))
    assert cm.handle({"Records": [table.record("INSERT", item, None)]}, clients) == {"batchItemFailures": []}
    cm.handle({"Records": [table.record("REMOVE", None, item)]}, clients)
    assert clients.iam.list_users()["Users"] == []


def test_disable_deactivates_and_enable_reactivates_the_key(table: Table, clients: cm.Clients) -> None:
    item = table.put_pending("toggle", ["toggle@example.test"])
    cm.handle({"Records": [table.record("INSERT", item, None)]}, clients)
    active = table.get("toggle")
    assert active is not None
    user_name = active["iam_user_name"]["S"]
    disabled = {**active, "status": {"S": "disabled"}}
    cm.handle({"Records": [table.record("MODIFY", disabled, active)]}, clients)
    assert [k["Status"] for k in clients.iam.list_access_keys(UserName=user_name)["AccessKeyMetadata"]] == ["Inactive"]
    cm.handle({"Records": [table.record("MODIFY", active, disabled)]}, clients)
    assert [k["Status"] for k in clients.iam.list_access_keys(UserName=user_name)["AccessKeyMetadata"]] == ["Active"]


def test_pending_again_rotates_the_key(table: Table, clients: cm.Clients) -> None:
    item = table.put_pending("rotate", ["rotate@example.test"])
    cm.handle({"Records": [table.record("INSERT", item, None)]}, clients)
    active = table.get("rotate")
    assert active is not None
    before = decrypt(clients, active)["access_key_id"]
    table.ddb.update_item(TableName=TABLE, Key=table.key("rotate"), UpdateExpression="SET #s = :p",
                          ExpressionAttributeNames={"#s": "status"}, ExpressionAttributeValues={":p": {"S": "pending"}})
    pending = table.get("rotate")
    cm.handle({"Records": [table.record("MODIFY", pending, active)]}, clients)
    rotated = table.get("rotate")
    assert rotated is not None and rotated["status"]["S"] == "active"
    after = decrypt(clients, rotated)["access_key_id"]
    keys = clients.iam.list_access_keys(UserName=active["iam_user_name"]["S"])["AccessKeyMetadata"]
    assert after != before and [k["AccessKeyId"] for k in keys] == [after]


def test_other_records_and_our_own_activation_are_left_alone(table: Table, clients: cm.Clients) -> None:
    route = {"PK": {"S": "ROUTE#*"}, "SK": {"S": "RULE#v1"}, "action": {"S": "store"}}
    item = table.put_pending("loop", ["loop@example.test"])
    cm.handle({"Records": [table.record("INSERT", item, None)]}, clients)
    active = table.get("loop")
    records = [table.record("INSERT", route, None), table.record("MODIFY", active, item)]
    assert cm.handle({"Records": records}, clients) == {"batchItemFailures": []}
    assert len(clients.iam.list_users()["Users"]) == 1
    assert table.get("loop") == active


def _managed_policy(clients: cm.Clients) -> str:
    document = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["ses:GetSendQuota"], "Resource": "*"}]}
    arn: str = clients.iam.create_policy(PolicyName="extra", PolicyDocument=json.dumps(document))["Policy"]["Arn"]
    return arn


# --- Outbound metrics ---------------------------------------------------------------------------


def sns_event(*names: str) -> dict[str, Any]:
    """An SNS → Lambda invocation carrying the named SES event samples."""
    records = []
    for i, name in enumerate(names):
        message = (EVENTS / f"{name}.json").read_text()
        records.append({"EventSource": "aws:sns", "EventVersion": "1.0",
                        "EventSubscriptionArn": f"arn:aws:sns:{REGION}:123456789012:ses-events:sub",
                        "Sns": {"Type": "Notification", "MessageId": f"m{i}",
                                "TopicArn": f"arn:aws:sns:{REGION}:123456789012:ses-events",
                                "Subject": None, "Message": message, "Timestamp": "2017-08-05T00:41:03.000Z",
                                "SignatureVersion": "1", "MessageAttributes": {}}})
    return {"Records": records}


@pytest.mark.parametrize(
    ("sample", "metrics"),
    [
        ("send", ["OutboundSend"]),
        ("delivery", ["OutboundDelivery"]),
        ("bounce_permanent", ["OutboundBounce", "OutboundBounceHard"]),
        ("bounce_transient", ["OutboundBounce", "OutboundBounceSoft"]),
        ("bounce_undetermined", ["OutboundBounce"]),
        ("complaint", ["OutboundComplaint"]),
        ("reject", ["OutboundReject"]),
        ("notification_bounce", ["OutboundBounce", "OutboundBounceHard"]),
        ("delivery_delay", []),
    ],
)
def test_each_ses_event_sample_maps_to_its_metrics(sample: str, metrics: list[str]) -> None:
    assert om.metrics_for(json.loads((EVENTS / f"{sample}.json").read_text())) == metrics


def _sums(cloudwatch: Any, namespace: str) -> dict[str, float]:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    sums = {}
    for metric in cloudwatch.list_metrics(Namespace=namespace)["Metrics"]:
        stats = cloudwatch.get_metric_statistics(
            Namespace=namespace, MetricName=metric["MetricName"], StartTime=now - dt.timedelta(hours=1),
            EndTime=now + dt.timedelta(minutes=5), Period=3600, Statistics=["Sum"])["Datapoints"]
        sums[metric["MetricName"]] = sum(p["Sum"] for p in stats)
    return sums


def test_batch_of_sns_notifications_lands_in_cloudwatch(aws: Aws) -> None:
    cloudwatch = aws.client("cloudwatch")
    clients = om.Clients(cloudwatch=cloudwatch, namespace="SESMail/test")
    event = sns_event("send", "send", "delivery", "bounce_permanent", "bounce_transient", "complaint",
                      "reject", "delivery_delay")
    event["Records"].append({"Sns": {"Message": "not json"}})
    om.handle(event, clients)
    assert _sums(cloudwatch, "SESMail/test") == {
        "OutboundSend": 2, "OutboundDelivery": 1, "OutboundBounce": 2, "OutboundBounceHard": 1,
        "OutboundBounceSoft": 1, "OutboundComplaint": 1, "OutboundReject": 1,
    }


def test_cloudwatch_failure_raises_so_lambda_retries() -> None:
    import boto3
    from botocore.config import Config

    from tests.conftest import free_port

    unreachable = boto3.client(  # nothing listens on this port: the call fails like an outage
        "cloudwatch", region_name=REGION, endpoint_url=f"http://127.0.0.1:{free_port()}",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(Exception, match="Could not connect"):
        om.handle(sns_event("send"), om.Clients(cloudwatch=unreachable, namespace="SESMail/test"))


def test_lambdas_import_nothing_else_from_the_package() -> None:
    import ast
    import sys

    for module in (cm, om):
        tree = ast.parse(Path(module.__file__).read_text())  # type: ignore[arg-type]
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {str(node.module).split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.level == 0}
        assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree))
        # The Lambda runtime provides the standard library and boto3, nothing else.
        assert imported - {"__future__"} <= set(sys.stdlib_module_names) | {"boto3"}, imported


def test_each_lambda_runs_alone_from_its_package(tmp_path: Path) -> None:
    """The zip archive_file builds (one module) imports with the standard library and boto3 only."""
    import subprocess
    import sys
    import zipfile

    for module in (cm, om):
        source = Path(module.__file__)  # type: ignore[arg-type]
        package = tmp_path / f"{source.stem}.zip"
        with zipfile.ZipFile(package, "w") as archive:
            archive.write(source, source.name)
        code = f"import {source.stem} as m; assert callable(m.handler); import sys; " \
               "assert not [n for n in sys.modules if n.startswith('sesmail_gateway')]"
        subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(package)!r}); {code}"],
                       check=True, timeout=60, cwd=tmp_path)


def test_credential_manager_entry_point_reads_its_environment(
        table: Table, aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    key_id = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    for name, value in {"TABLE_NAME": TABLE, "KMS_KEY_ID": key_id, "AWS_REGION": REGION,
                        "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": aws.endpoint,
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PERMISSIONS_BOUNDARY_ARN", raising=False)
    monkeypatch.setattr(cm, "_clients", None)
    item = table.put_pending("entry", ["entry@example.test"])
    assert cm.handler({"Records": [table.record("INSERT", item, None)]}, None) == {"batchItemFailures": []}
    assert table.get("entry")["status"]["S"] == "active"  # type: ignore[index]


def test_outbound_metrics_entry_point_reads_its_environment(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"METRICS_NAMESPACE": "SESMail/entry", "AWS_DEFAULT_REGION": REGION,
                        "AWS_ENDPOINT_URL": aws.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(om, "_clients", None)
    assert om.handler(sns_event("complaint"), None) == {"OutboundComplaint": 1}
    assert _sums(aws.client("cloudwatch"), "SESMail/entry") == {"OutboundComplaint": 1}
