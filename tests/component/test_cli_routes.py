"""`sesmail-gateway routes …` run for real, as a subprocess against a temporary config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ENV_VAR = "SESMAIL_GATEWAY_CONFIG"


@dataclass
class RoutesCli:
    """The command line against one config and data dir (no daemon: that is conftest's Gateway)."""

    config: Path
    data_dir: Path

    def run(self, *args: str, config: str = "after", check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run the CLI with --config after the leaf ("after"), before it ("before"), or from the env ("env")."""
        env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
        argv = list(args)
        if config == "after":
            argv += ["--config", str(self.config)]
        elif config == "before":
            argv = ["--config", str(self.config), *argv]
        else:
            env[ENV_VAR] = str(self.config)
        done = subprocess.run([sys.executable, "-m", "sesmail_gateway", *argv], capture_output=True,
                              text=True, env=env, timeout=60)
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def fails(self, *args: str) -> str:
        """Run a command that must fail with exactly one line on stderr; return that line."""
        done = self.run(*args, check=False)
        assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert done.stdout == ""
        return lines[0]


def make_gateway(root: Path, rules_url: str = "sqlite://rules.db") -> RoutesCli:
    data_dir = root / "data"
    config = root / "gateway.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f'[gateway]\nhostname="mx.test"\ndomains=["example.test"]\ndata_dir="{data_dir}"\n'
        f'[rules]\nurl="{rules_url}"\n'
    )
    return RoutesCli(config, data_dir)


@pytest.fixture
def gateway(tmp_path: Path) -> RoutesCli:
    return make_gateway(tmp_path / "one")


def test_add_list_get_enable_disable_delete(gateway: RoutesCli) -> None:
    added = gateway.run("routes", "add", "Alice@Example.test", "--action", "forward-to-gmail",
                        "--target", "alice@gmail.com", "--action", "store", "--description", "Alice")
    assert added.stdout == "added route alice@example.test: forward-to-gmail -> alice@gmail.com, store\n"
    gateway.run("routes", "add", "*@example.test", "--action", "bounce", "--disabled")
    assert (gateway.data_dir / "rules.db").is_file()

    listed = gateway.json("routes", "list")
    assert [r["recipient"] for r in listed] == ["*@example.test", "alice@example.test"]
    assert listed[0]["enabled"] is False
    alice = gateway.json("routes", "get", "alice@example.test")
    assert set(alice) == {"recipient", "actions", "enabled", "description", "created_at", "updated_at"}
    assert alice["actions"] == [{"type": "forward-to-gmail", "target": "alice@gmail.com"},
                                {"type": "store", "target": ""}]
    assert alice["description"] == "Alice" and alice["created_at"].endswith("Z")
    table = gateway.run("routes", "list").stdout
    assert "alice@example.test" in table and "forward-to-gmail -> alice@gmail.com, store" in table

    assert gateway.run("routes", "enable", "*@example.test").stdout == "enabled route *@example.test\n"
    assert gateway.json("routes", "get", "*@example.test")["enabled"] is True
    gateway.run("routes", "disable", "*@example.test")
    assert gateway.json("routes", "get", "*@example.test")["enabled"] is False

    replaced = gateway.run("routes", "add", "alice@example.test", "--action", "maildir", "--target", "Maildir")
    assert replaced.stdout.startswith("replaced route alice@example.test")
    again = gateway.json("routes", "get", "alice@example.test")
    assert again["created_at"] == alice["created_at"]
    assert again["actions"] == [{"type": "maildir", "target": "Maildir"}]

    assert gateway.run("routes", "delete", "alice@example.test").stdout == "deleted route alice@example.test\n"
    assert [r["recipient"] for r in gateway.json("routes", "list")] == ["*@example.test"]


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_config_is_found_before_after_and_from_env(gateway: RoutesCli, where: str) -> None:
    gateway.run("routes", "add", f"{where}@example.test", "--action", "store", config=where)
    listed = json.loads(gateway.run("routes", "list", "--json", config=where).stdout)
    assert [r["recipient"] for r in listed] == [f"{where}@example.test"]


def test_export_then_import_into_a_fresh_data_dir(gateway: RoutesCli, tmp_path: Path) -> None:
    gateway.run("routes", "add", "*", "--action", "maildir", "--target", "Maildir", "--disabled")
    gateway.run("routes", "add", "a+b@example.test", "--action", "forward-to-gmail", "--target", "a@gmail.com",
                "--action", "forward-to-gmail", "--target", "b@gmail.com", "--description", "two inboxes")
    exported = tmp_path / "backup.json"
    assert gateway.run("routes", "export", str(exported)).stdout == \
        f"exported 2 items (2 routes) to {exported}\n"
    document = json.loads(exported.read_text())
    assert document["Count"] == document["ScannedCount"] == 2
    assert document["Items"][0]["enabled"] == {"BOOL": False}

    fresh = make_gateway(tmp_path / "two")
    assert fresh.run("routes", "import", str(exported)).stdout == "imported 2 items (2 routes)\n"
    assert fresh.json("routes", "list") == gateway.json("routes", "list")
    assert json.loads(fresh.run("routes", "export").stdout) == document


HAND_WRITTEN: dict[str, Any] = {
    "Items": [
        {"PK": {"S": "ROUTE#old@example.test"}, "SK": {"S": "RULE#v1"}, "entity_type": {"S": "ROUTE"},
         "recipient": {"S": "old@example.test"}, "enabled": {"BOOL": True},
         "action": {"S": "forward-to-gmail"}, "target": {"S": "old@gmail.com"},
         "created_at": {"S": "2023-01-01T00:00:00Z"}, "updated_at": {"S": "2023-01-01T00:00:00Z"}},
        {"PK": {"S": "ROUTE#*@Example.TEST"}, "SK": {"S": "RULE#v1"}, "enabled": {"BOOL": True},
         "action": {"S": "bounce"}, "target": {"S": ""},
         "actions": {"L": [{"M": {"type": {"S": "forward-to-gmail"}, "target": {"S": "one@gmail.com"}}},
                           {"M": {"type": {"S": "forward-to-gmail"}, "target": {"S": "two@gmail.com"}}}]}},
        {"PK": {"S": "SMTP_USER#app"}, "SK": {"S": "CREDENTIALS#v1"}, "status": {"S": "active"},
         "allowed_senders": {"SS": ["app@example.test"]}, "version": {"N": "3"}},
    ],
    "Count": 3,
    "ScannedCount": 3,
    "ConsumedCapacity": None,
}


def test_import_reads_both_layouts_and_keeps_other_records(gateway: RoutesCli, tmp_path: Path) -> None:
    source = tmp_path / "scan.json"
    source.write_text(json.dumps(HAND_WRITTEN))
    assert gateway.run("routes", "import", str(source)).stdout == "imported 3 items (2 routes)\n"

    old = gateway.json("routes", "get", "old@example.test")
    assert old["actions"] == [{"type": "forward-to-gmail", "target": "old@gmail.com"}]
    assert old["created_at"] == "2023-01-01T00:00:00Z"
    both = gateway.json("routes", "get", "*@example.test")  # stored under the lower-case key
    assert [a["target"] for a in both["actions"]] == ["one@gmail.com", "two@gmail.com"]

    exported = json.loads(gateway.run("routes", "export", config="env").stdout)
    user = next(item for item in exported["Items"] if item["PK"] == {"S": "SMTP_USER#app"})
    assert user == HAND_WRITTEN["Items"][2]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"Count": 0}', "aws dynamodb scan"),
        ('{"Items": [{"PK": {"S": "ROUTE#*"}, "SK": {"S": "RULE#v1"}, "enabled": {"BOOL": "yes"}}]}',
         r"Items[0].enabled: not a valid BOOL value"),
        ('{"Items": [{"PK": {"S": "ROUTE#*"}, "SK": {"S": "RULE#v1"}, "action": {"S": "store"}},'
         ' {"PK": {"S": "ROUTE#*"}, "SK": {"S": "RULE#v1"}}]}', "Items[1] (ROUTE#*): no actions"),
        ('{"Items": [{"PK": {"S": "ROUTE#nobody"}, "SK": {"S": "RULE#v1"}, "action": {"S": "store"}}]}',
         "bad route pattern 'nobody'"),
        # Numbers outside DynamoDB's range (38 digits, exponent -130..125) and JSON nested too deeply.
        ('{"Items": [{"PK": {"S": "ROUTE#*"}, "SK": {"S": "RULE#v1"}, "n": {"N": "' + "1" * 40 + '"}}]}',
         "Items[0].n: not a valid N value"),
        ('{"Items": [{"PK": {"S": "ROUTE#*"}, "SK": {"S": "RULE#v1"}, "n": {"N": "1e400"}}]}',
         "Items[0].n: not a valid N value"),
        ('{"Items": [' + "[" * 100_000 + "]" * 100_000 + "]}", "nested too deeply"),
    ],
)
def test_malformed_import_is_one_line_and_writes_nothing(
    gateway: RoutesCli, tmp_path: Path, content: str, message: str
) -> None:
    gateway.run("routes", "add", "keep@example.test", "--action", "store")
    before = gateway.run("routes", "export").stdout
    source = tmp_path / "bad.json"
    source.write_text(content)
    line = gateway.fails("routes", "import", str(source))
    assert line.startswith(f"sesmail-gateway: {source}: ") and message in line
    assert gateway.run("routes", "export").stdout == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "x@example.test", "--action", "teleport"], "unknown action 'teleport'"),
        (["add", "x@example.test", "--target", "a@gmail.com"], "must follow its own --action"),
        (["add", "x@example.test", "--action", "maildir"], "maildir needs --target"),
        (["add", "x@example.test"], "at least one --action"),
        (["add", "not-a-pattern", "--action", "store"], "bad route pattern 'not-a-pattern'"),
        (["get", "ghost@example.test"], "no route for ghost@example.test"),
        (["enable", "ghost@example.test"], "no route for ghost@example.test"),
        (["disable", "ghost@example.test"], "no route for ghost@example.test"),
        (["delete", "Ghost@example.test"], "no route for ghost@example.test"),
        (["import", "/nonexistent/scan.json"], "cannot read"),
        (["test", "no-at-sign"], "not an address"),
    ],
)
def test_bad_arguments_give_one_clear_line(gateway: RoutesCli, args: list[str], message: str) -> None:
    line = gateway.fails("routes", *args)
    assert line.startswith("sesmail-gateway: ") and message in line


def test_routes_test_explains_the_match(gateway: RoutesCli) -> None:
    gateway.run("routes", "add", "bob+lists@example.test", "--action", "store", "--disabled")
    gateway.run("routes", "add", "*@example.test", "--action", "maildir", "--target", "Maildir")
    out = gateway.run("routes", "test", "Bob+Lists@example.test").stdout.splitlines()
    assert out[0] == "address:  bob+lists@example.test"
    assert out[1] == "route:    *@example.test (level domain)"
    assert out[2] == "actions:  maildir -> Maildir"
    assert [line.split() for line in out[4:7]] == [
        ["exact", "bob+lists@example.test", "disabled"],
        ["plus-stripped", "bob@example.test", "absent"],
        ["domain", "*@example.test", "matched"],
    ]
    assert out[7] == "answer:   250 2.1.5 Recipient ok"

    result = gateway.json("routes", "test", "bob+lists@example.test")
    assert (result["pattern"], result["level"], result["reply"]) == ("*@example.test", "domain", "250 2.1.5 Recipient ok")
    assert [c["outcome"] for c in result["tried"]] == ["disabled", "absent", "matched"]


def test_routes_test_without_a_match_says_what_rcpt_answers(gateway: RoutesCli) -> None:
    gateway.run("routes", "add", "*@elsewhere.test", "--action", "store")
    out = gateway.run("routes", "test", "carol@example.test").stdout.splitlines()
    assert out[-1] == "no route: mail to carol@example.test would be refused with 550 5.1.1"
    assert [line.split()[-1] for line in out[2:5]] == ["absent", "absent", "absent"]


def test_unreadable_rule_store_is_one_line(gateway: RoutesCli) -> None:
    gateway.data_dir.mkdir(parents=True)
    (gateway.data_dir / "rules.db").write_bytes(b"garbage, not sqlite" * 100)
    line = gateway.fails("routes", "test", "carol@example.test")
    assert "rules.db" in line and "not a database" in line


def test_dynamodb_url_without_a_table_is_one_line(tmp_path: Path) -> None:
    line = make_gateway(tmp_path, "dynamodb://").fails("routes", "list")
    assert line == "sesmail-gateway: rules.url: expected dynamodb://TABLE, got 'dynamodb://'"
