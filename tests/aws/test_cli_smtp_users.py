"""`sesmail-gateway smtp-users …` against DynamoDB (moto server) and SQLite, with KMS for --decrypt."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.aws.motoserver import Moto, cli, create_rule_table
from tests.conftest import write_config


def make_config(tmp_path: Path, moto: Moto, rules_url: str) -> Path:
    return write_config(tmp_path / "gateway.toml", {
        "gateway": {"hostname": "mx.test", "domains": ["example.test"], "data_dir": str(tmp_path / "data")},
        "rules": {"url": rules_url},
        "aws": moto.aws_section,
    })


@pytest.fixture(params=["dynamodb", "sqlite"])
def config(request: pytest.FixtureRequest, tmp_path: Path, moto: Moto, unique: Callable[[str], str]) -> Path:
    if request.param == "sqlite":
        return make_config(tmp_path, moto, "sqlite://rules.db")
    return make_config(tmp_path, moto, f"dynamodb://{create_rule_table(moto, unique('users'))}")


def as_json(config: Path, *args: str) -> Any:
    return json.loads(cli(config, *args, "--json").stdout)


def test_create_list_show_disable_delete(config: Path) -> None:
    created = cli(config, "smtp-users", "create", "app-mailer", "--allowed-sender", "App@Example.test",
                      "--allowed-sender", "@example.test").stdout
    assert created == "created smtp user app-mailer (pending: the credential manager issues its password)\n"
    again = cli(config, "smtp-users", "create", "app-mailer", "--allowed-sender", "a@example.test", check=False)
    assert again.returncode == 1 and again.stderr == "sesmail-gateway: smtp user app-mailer already exists\n"
    cli(config, "routes", "add", "*@example.test", "--action", "store")  # routes share the table

    (user,) = as_json(config, "smtp-users", "list")
    assert user["username"] == "app-mailer" and user["status"] == "pending"
    assert user["allowed_senders"] == ["@example.test", "app@example.test"]
    assert user["has_credentials"] is False and user["created_at"]
    assert [r["recipient"] for r in as_json(config, "routes", "list")] == ["*@example.test"]

    exported = json.loads(cli(config, "routes", "export").stdout)["Items"]
    record = next(item for item in exported if item["PK"] == {"S": "SMTP_USER#app-mailer"})
    assert record["SK"] == {"S": "CREDENTIALS#v1"} and record["entity_type"] == {"S": "SMTP_CREDENTIALS"}
    assert sorted(record["allowed_senders"]["SS"]) == ["@example.test", "app@example.test"]

    assert cli(config, "smtp-users", "disable", "app-mailer").stdout == "disabled smtp user app-mailer\n"
    assert as_json(config, "smtp-users", "show", "app-mailer")["status"] == "disabled"
    assert cli(config, "smtp-users", "delete", "app-mailer").stdout == "deleted smtp user app-mailer\n"
    gone = cli(config, "smtp-users", "show", "app-mailer", check=False)
    assert gone.returncode == 1 and gone.stderr == "sesmail-gateway: no smtp user app-mailer\n"


def test_show_decrypt_prints_endpoint_username_and_password_via_kms(
    tmp_path: Path, moto: Moto, unique: Callable[[str], str]
) -> None:
    table = create_rule_table(moto, unique("users"))
    config = make_config(tmp_path, moto, f"dynamodb://{table}")
    cli(config, "smtp-users", "create", "billing", "--allowed-sender", "billing@example.test")
    pending = cli(config, "smtp-users", "show", "billing", "--decrypt", check=False)
    assert pending.returncode == 1 and "no credentials yet (status pending)" in pending.stderr

    # What the credential-manager Lambda writes: KMS ciphertext of the SMTP credentials, status active.
    kms = moto.client("kms")
    key_id = kms.create_key(Description="smtp credentials")["KeyMetadata"]["KeyId"]
    secret = json.dumps({"access_key_id": "AKIAEXAMPLE123", "smtp_password": "BExamplePassword/123"})
    blob = kms.encrypt(KeyId=key_id, Plaintext=secret.encode())["CiphertextBlob"]
    moto.client("dynamodb").update_item(
        TableName=table, Key={"PK": {"S": "SMTP_USER#billing"}, "SK": {"S": "CREDENTIALS#v1"}},
        UpdateExpression="SET encrypted_credentials = :c, #s = :a",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":c": {"B": blob}, ":a": {"S": "active"}})

    plain = cli(config, "smtp-users", "show", "billing").stdout
    assert "BExamplePassword" not in plain and "has_credentials  True" in plain
    assert "BExamplePassword" not in cli(config, "smtp-users", "list", "--json").stdout
    shown = as_json(config, "smtp-users", "show", "billing", "--decrypt")
    assert shown["smtp_endpoint"] == "email-smtp.us-east-1.amazonaws.com:587"
    assert (shown["smtp_username"], shown["smtp_password"]) == ("AKIAEXAMPLE123", "BExamplePassword/123")
    assert shown["status"] == "active"


@pytest.mark.parametrize(("args", "message"), [
    (["create", "bad name", "--allowed-sender", "a@example.test"], "bad smtp user name"),
    (["create", "ok", "--allowed-sender", "not an address"], "expected an address or @domain"),
    (["disable", "ghost"], "no smtp user ghost"),
    (["delete", "ghost"], "no smtp user ghost"),
])
def test_bad_arguments_are_one_line(tmp_path: Path, moto: Moto, args: list[str], message: str) -> None:
    done = cli(make_config(tmp_path, moto, "sqlite://rules.db"), "smtp-users", *args, check=False)
    assert done.returncode == 1 and message in done.stderr and len(done.stderr.splitlines()) == 1
