"""`sesmail-gateway routes …` as a subprocess against a DynamoDB table in moto server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.aws.motoserver import Moto, cli
from tests.conftest import run_cli, write_config


def config_for(tmp_path: Path, moto: Moto, table: str) -> Path:
    return write_config(tmp_path / "gateway.toml", {
        "gateway": {"hostname": "mx.test", "domains": ["example.test"], "data_dir": str(tmp_path / "data")},
        "rules": {"url": f"dynamodb://{table}"},
        "aws": moto.aws_section,
    })


def as_json(config: Path, *args: str) -> Any:
    return json.loads(cli(config, *args, "--json").stdout)


def test_every_routes_command_round_trips_on_dynamodb(tmp_path: Path, moto: Moto, rule_table: str) -> None:
    config = config_for(tmp_path, moto, rule_table)
    added = cli(config, "routes", "add", "Alice@Example.test", "--action", "forward-to-gmail",
                    "--target", "alice@gmail.com", "--action", "store", "--description", "Alice").stdout
    assert added == "added route alice@example.test: forward-to-gmail -> alice@gmail.com, store\n"
    cli(config, "routes", "add", "*@example.test", "--action", "bounce", "--disabled")

    listed = as_json(config, "routes", "list")
    assert [r["recipient"] for r in listed] == ["*@example.test", "alice@example.test"]
    assert listed[0]["enabled"] is False
    raw = moto.client("dynamodb").get_item(TableName=rule_table, Key={"PK": {"S": "ROUTE#alice@example.test"},
                                                                       "SK": {"S": "RULE#v1"}})["Item"]
    assert raw["entity_type"] == {"S": "ROUTE"} and len(raw["actions"]["L"]) == 2

    assert cli(config, "routes", "enable", "*@example.test").stdout == "enabled route *@example.test\n"
    assert as_json(config, "routes", "get", "*@example.test")["enabled"] is True
    tested = as_json(config, "routes", "test", "bob@example.test")
    assert (tested["pattern"], tested["level"]) == ("*@example.test", "domain")
    cli(config, "routes", "disable", "*@example.test")
    assert cli(config, "routes", "delete", "*@example.test").stdout == "deleted route *@example.test\n"
    missing = cli(config, "routes", "get", "*@example.test", check=False)
    assert missing.returncode == 1 and missing.stderr == "sesmail-gateway: no route for *@example.test\n"

    exported = tmp_path / "backup.json"
    cli(config, "routes", "export", str(exported))
    document = json.loads(exported.read_text())
    assert document["Count"] == 1 and document["Items"][0]["PK"] == {"S": "ROUTE#alice@example.test"}


def test_a_thousand_rule_import_reports_progress_and_exports_back(
    tmp_path: Path, moto: Moto, rule_table: str, unique: Any
) -> None:
    items = [{"PK": {"S": f"ROUTE#user{i:04d}@example.test"}, "SK": {"S": "RULE#v1"},
              "entity_type": {"S": "ROUTE"}, "recipient": {"S": f"user{i:04d}@example.test"},
              "action": {"S": "forward-to-gmail"}, "target": {"S": f"user{i:04d}@gmail.com"},
              "enabled": {"BOOL": True}} for i in range(1000)]
    items.append({"PK": {"S": "SMTP_USER#app"}, "SK": {"S": "CREDENTIALS#v1"},
                  "entity_type": {"S": "SMTP_CREDENTIALS"}, "allowed_senders": {"SS": ["a@example.test"]}})
    source = tmp_path / "scan.json"
    source.write_text(json.dumps({"Items": items, "Count": len(items), "ScannedCount": len(items)}))
    config = config_for(tmp_path, moto, rule_table)

    done = run_cli(config, "routes", "import", str(source))
    assert done.stdout == "imported 1001 items (1000 routes)\n"
    progress = done.stderr.splitlines()
    assert progress[0] == "  250/1001 records written" and progress[-1] == "  1001/1001 records written"

    count = moto.client("dynamodb").scan(TableName=rule_table, Select="COUNT")["Count"]
    assert count == 1001
    assert len(as_json(config, "routes", "list")) == 1000
    rule = as_json(config, "routes", "test", "user0999@example.test")["rule"]
    assert rule["actions"] == [{"type": "forward-to-gmail", "target": "user0999@gmail.com"}]

    # Round trip into a second table: the export imports back unchanged.
    exported = json.loads(cli(config, "routes", "export").stdout)
    second = tmp_path / "second"
    second.mkdir()
    from tests.aws.motoserver import create_rule_table
    other = config_for(second, moto, create_rule_table(moto, unique("copy")))
    (second / "scan.json").write_text(json.dumps(exported))
    cli(other, "routes", "import", str(second / "scan.json"))
    assert json.loads(cli(other, "routes", "export").stdout) == exported


def test_unreachable_table_is_one_line(tmp_path: Path, moto: Moto) -> None:
    config = config_for(tmp_path, moto, "no-such-table")
    done = cli(config, "routes", "list", check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("sesmail-gateway: rule table no-such-table: ResourceNotFoundException")
    assert len(done.stderr.splitlines()) == 1
