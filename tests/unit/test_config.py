"""Config loading: defaults, types, and one clear line naming the bad key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sesmail_gateway.config import ConfigError, load, load_mapping, parse_duration, parse_hostport


def test_defaults_match_the_documented_contract() -> None:
    config = load_mapping({})
    assert config.smtp.listen == ("0.0.0.0:25",)
    assert config.smtp.max_message_size == 41943040
    assert config.smtp.max_recipients == 100
    assert config.smtp.workers == 0
    assert config.checks.dmarc == "enforce"
    assert config.rules.url == "sqlite://rules.db"
    assert config.delivery.max_age == 5 * 86400
    assert config.delivery.backoff_base == 10
    assert config.delivery.backoff_max == 3600
    assert config.gmail.label_ids == ("INBOX", "UNREAD")
    assert config.bounce.mode == "reject"
    assert config.metrics.listen == "127.0.0.1:9101"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"smtp": {"max_connectionz": 5}}, "smtp.max_connectionz: unknown key"),
        ({"smtpp": {}}, "smtpp: unknown section"),
        ({"smtp": {"max_connections": "many"}}, "smtp.max_connections: expected an integer"),
        ({"smtp": {"max_connections": 0}}, "smtp.max_connections: must be greater than 0"),
        ({"smtp": {"listen": ["127.0.0.1"]}}, "smtp.listen: expected host:port"),
        ({"checks": {"dmarc": "strict"}}, "checks.dmarc: expected one of enforce, monitor"),
        ({"delivery": {"max_age": "five days"}}, "delivery.max_age: expected a duration"),
        ({"delivery": {"backoff_base": "2h", "backoff_max": "1h"}}, "delivery.backoff_max: must not be shorter"),
        ({"rules": {"url": "mysql://x"}}, "rules.url: expected a URL starting with sqlite://, dynamodb://"),
        ({"gateway": {"domains": []}}, "gateway.domains: must list at least one domain"),
        ({"smtp": {"tls_cert": "/nonexistent.pem"}}, "smtp.tls_cert: tls_cert and tls_key must be set together"),
        ({"smtp": {"workers": True}}, "smtp.workers: expected an integer"),
        ({"smtp": "yes"}, "smtp: expected a table"),
        ({"checks": {"dns_servers": ["dns.example:53"]}}, "checks.dns_servers: 'dns.example:53' is not an IP address"),
    ],
)
def test_bad_values_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_mapping(data)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_durations_and_addresses() -> None:
    assert parse_duration("10s") == 10
    assert parse_duration("5m") == 300
    assert parse_duration("1h") == 3600
    assert parse_duration("5d") == 432000
    assert parse_duration(2.5) == 2.5
    with pytest.raises(ValueError):
        parse_duration("0s")
    assert parse_hostport("127.0.0.1:2525") == ("127.0.0.1", 2525)
    assert parse_hostport("[::1]:25") == ("::1", 25)
    assert parse_hostport("10.0.0.53", default_port=53) == ("10.0.0.53", 53)
    with pytest.raises(ValueError):
        parse_hostport("host:99999")


def test_relative_data_dir_resolves_against_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "gw.toml").write_text('[gateway]\ndata_dir = "../var"\n')
    config = load(folder / "gw.toml")
    assert config.data_dir == (tmp_path / "var").resolve()
    assert config.data_path("mail") == (tmp_path / "var" / "mail").resolve()
    assert config.data_path("/srv/mail") == Path("/srv/mail")


def test_environment_variable_is_the_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gw.toml").write_text('[gateway]\nhostname = "mx.env.test"\n')
    monkeypatch.setenv("SESMAIL_GATEWAY_CONFIG", str(tmp_path / "gw.toml"))
    assert load().gateway.hostname == "mx.env.test"


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "absent.toml")
    (tmp_path / "bad.toml").write_text("[gateway\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(tmp_path / "bad.toml")


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[2]
    local = load(root / "config" / "local.toml")
    assert local.smtp.listen == ("127.0.0.1:2525",)
    assert set(local.gateway.domains) == {"example.test", "localhost"}
    assert local.rules.url.startswith("sqlite://")
    assert local.archive.url.startswith("file://")


def test_production_example_loads_and_names_aws_backends() -> None:
    root = Path(__file__).resolve().parents[2]
    example = load(root / "config" / "gateway.example.toml")
    assert example.rules.url.startswith("dynamodb://")
    assert example.archive.url.startswith("s3://")
    assert example.gmail.tokens.startswith("ssm://")
    assert example.smtp.listen == ("0.0.0.0:25", "[::]:25")


def _time_keys() -> list[str]:
    """Every float-valued key of every section whose name says it holds a time."""
    import dataclasses

    from sesmail_gateway.config import _SECTION_TYPES

    return [f"{section}.{f.name}" for section, kind in _SECTION_TYPES.items()
            for f in dataclasses.fields(kind) if isinstance(f.default, float)
            and re.search(r"timeout|seconds|age|backoff|lifetime|interval|delay|ttl", f.name)]


def test_every_time_valued_key_is_a_duration_key() -> None:
    from sesmail_gateway.config import _DURATION_KEYS

    assert {"smtp.command_timeout", "smtp.data_timeout", "checks.dns_timeout", "rules.cache_seconds",
            "delivery.max_age", "delivery.backoff_base", "delivery.backoff_max",
            "gmail.token_poll_seconds"} <= set(_time_keys())
    assert set(_time_keys()) <= _DURATION_KEYS


@pytest.mark.parametrize("key", _time_keys())
@pytest.mark.parametrize(("text", "seconds"), [("300", 300), ("5m", 300), ("1h", 3600), ("5d", 432000),
                                               (300, 300), (2.5, 2.5)])
def test_every_time_valued_key_takes_the_duration_syntax(key: str, text: object, seconds: float) -> None:
    """smtp.command_timeout = "5m" was refused while delivery.max_age = "5d" worked."""
    section, name = key.split(".")
    extra = {"backoff_base": {"backoff_max": "30d"}, "backoff_max": {"backoff_base": "1s"}}.get(name, {})
    config = load_mapping({section: {name: text, **extra}})
    assert getattr(getattr(config, section), name) == seconds


@pytest.mark.parametrize("key", _time_keys())
def test_every_time_valued_key_names_itself_when_the_duration_is_bad(key: str) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: "):
        load_mapping({section: {name: "soon"}})
