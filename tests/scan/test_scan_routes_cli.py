"""`routes add --spam/--allow-from/--block-from` and what `routes get`, `routes test` and
`routes export` show, run for real as subprocesses against a temporary config."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli, write_config


def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "gateway.toml", {
        "gateway": {"hostname": "mx.test", "domains": ["example.test"], "data_dir": str(tmp_path / "data")},
    })


def test_routes_add_stores_the_scan_settings_and_test_and_get_show_them(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    added = run_cli(cfg, "routes", "add", "bob@example.test", "--action", "maildir", "--target", "bob",
                    "--spam", "label", "--allow-from", "DMARC:Bank.test", "--allow-from", "@friends.test",
                    "--block-from", "mallory@example.net").stdout
    assert "spam:     label" in added and "allow_from: dmarc:bank.test, @friends.test" in added

    shown = run_cli(cfg, "routes", "test", "bob+news@example.test").stdout
    assert "spam:     label" in shown
    assert "allow_from: dmarc:bank.test, @friends.test" in shown
    assert "block_from: mallory@example.net" in shown

    rule = json.loads(run_cli(cfg, "routes", "get", "bob@example.test", "--json").stdout)
    assert (rule["spam"], rule["allow_from"], rule["block_from"]) == (
        "label", ["dmarc:bank.test", "@friends.test"], ["mallory@example.net"])
    exported = json.loads(run_cli(cfg, "routes", "export").stdout)["Items"][0]
    assert exported["spam"] == {"S": "label"}
    assert exported["block_from"] == {"L": [{"S": "mallory@example.net"}]}

    # Replacing the rule without the flags clears them: `routes add` writes the whole rule.
    run_cli(cfg, "routes", "add", "bob@example.test", "--action", "maildir", "--target", "bob")
    plain = json.loads(run_cli(cfg, "routes", "get", "bob@example.test", "--json").stdout)
    assert not {"spam", "allow_from", "block_from"} & set(plain)


def test_bad_scan_flags_are_one_line_errors(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    bad = run_cli(cfg, "routes", "add", "*", "--action", "maildir", "--target", "m", "--block-from", "nobody",
                  check=False)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0
    assert "--block-from: bad sender entry 'nobody'" in bad.stderr
    wrong = run_cli(cfg, "routes", "add", "*", "--action", "maildir", "--target", "m", "--spam", "drop",
                    check=False)
    assert wrong.returncode != 0 and "invalid choice: 'drop'" in wrong.stderr
