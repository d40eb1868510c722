"""An existing SES-era deployment, pointed at as it is: the seed's DynamoDB rule, S3 bucket and SSM
token layout, delivering through the real daemon into the local Gmail-speaking server."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Callable

from tests.aws.motoserver import Moto
from tests.conftest import Gateway, wait_for
from tests.gmailserver import GmailTestServer

MESSAGE = (b"From: Alice <alice@sender.test>\r\nTo: info@example.test\r\nSubject: seed deployment\r\n"
           b"Message-ID: <seed-1@sender.test>\r\n\r\nbody \xff 8-bit\r\n")


def test_seed_table_bucket_and_ssm_layout_deliver_to_gmail_unchanged(
    make_gateway: Callable[..., Gateway], moto: Moto, gmail: GmailTestServer, rule_table: str,
    unique: Callable[[str], str],
) -> None:
    # What the seed deployment already holds, written the way it wrote it.
    moto.client("dynamodb").put_item(TableName=rule_table, Item={
        "PK": {"S": "ROUTE#info@example.test"}, "SK": {"S": "RULE#v1"}, "entity_type": {"S": "ROUTE"},
        "recipient": {"S": "info@example.test"}, "action": {"S": "forward-to-gmail"},
        "target": {"S": "info-forward@gmail.test"}, "enabled": {"BOOL": True}})
    bucket = unique("seed-archive")
    moto.client("s3").create_bucket(Bucket=bucket)
    path = f"/ses-mail/{unique('prod')}/gmail-forwarder/oauth"
    ssm = moto.client("ssm")
    ssm.put_parameter(Name=f"{path}/client-credentials", Type="SecureString",
                      Value=json.dumps(gmail.client_secret_json()))
    ssm.put_parameter(Name=f"{path}/refresh-token", Type="SecureString",
                      Value=gmail.issue_refresh_token("team@gmail.test"))

    gateway = make_gateway({
        "rules": {"url": f"dynamodb://{rule_table}"},
        "archive": {"url": f"s3://{bucket}/inbound"},
        "gmail": {"tokens": f"ssm://{path}", "api_endpoint": gmail.url, "token_uri": gmail.token_uri},
        "aws": moto.aws_section,
    })
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=60) as client:
        client.sendmail("alice@sender.test", ["info@example.test"], MESSAGE)

    # The one token of the old setup imports for every target, as the old system did.
    imported = wait_for(lambda: gmail.imports_for("team@gmail.test"), timeout=20)
    assert len(imported) == 1 and imported[0].raw.endswith(MESSAGE)
    location = gateway.events("archived")[0]["location"]
    key = location.removeprefix(f"s3://{bucket}/")
    assert moto.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read() == imported[0].raw
