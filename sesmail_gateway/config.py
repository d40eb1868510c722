"""Configuration: the only module that reads config files and the environment.

The TOML file is loaded into frozen dataclasses, one per section. Unknown
keys, wrong types and bad values raise ConfigError with one line naming the
key (``smtp.max_connections: expected an integer, got "many"``); the CLI
turns that into exit status 2.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sesmail_gateway.scan.lists import check_sender_entries

ENV_VAR = "SESMAIL_GATEWAY_CONFIG"


class ConfigError(Exception):
    """A configuration problem, described in one line."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: str | int | float, *, allow_zero: bool = False) -> float:
    """Seconds from ``"10s"``, ``"5m"``, ``"1h"``, ``"5d"``, ``"300"`` or a plain number."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"expected a duration such as \"10s\" or \"5d\", got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"expected a duration such as \"10s\" or \"5d\", got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise ValueError("must be a positive duration")
    return seconds


def parse_hostport(value: str, *, default_port: int | None = None) -> tuple[str, int]:
    """``"127.0.0.1:2525"`` or ``"[::1]:25"`` → (host, port)."""
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"expected host:port, got {value!r}")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad port in {value!r}")
    return host, int(port_text)


@dataclass(frozen=True, kw_only=True)
class GatewayConfig:
    hostname: str = "mx.example.com"
    domains: tuple[str, ...] = ("example.com",)
    data_dir: str = "/var/lib/sesmail-gateway"


@dataclass(frozen=True, kw_only=True)
class SmtpConfig:
    listen: tuple[str, ...] = ("0.0.0.0:25",)
    max_message_size: int = 41943040
    max_recipients: int = 100
    max_connections: int = 500
    max_connections_per_ip: int = 20
    workers: int = 0
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    worker_timeout: float = 60.0
    junk_command_limit: int = 100
    tls_cert: str = ""
    tls_key: str = ""


@dataclass(frozen=True, kw_only=True)
class ChecksConfig:
    dns_servers: tuple[str, ...] = ()
    dns_timeout: float = 5.0
    dmarc: str = "enforce"
    spf_fail: str = "tag"


@dataclass(frozen=True, kw_only=True)
class RulesConfig:
    url: str = "sqlite://rules.db"
    cache_seconds: float = 60.0


@dataclass(frozen=True, kw_only=True)
class ArchiveConfig:
    url: str = "file://archive"
    kms_key_id: str = ""


@dataclass(frozen=True, kw_only=True)
class DeliveryConfig:
    concurrency: int = 16
    max_age: float = 5 * 86400.0
    backoff_base: float = 10.0
    backoff_max: float = 3600.0
    hang_timeout: float = 900.0


@dataclass(frozen=True, kw_only=True)
class GmailConfig:
    tokens: str = "file://tokens"
    client_secrets: str = ""
    api_endpoint: str = ""
    token_uri: str = ""
    label_ids: tuple[str, ...] = ("INBOX", "UNREAD")
    token_poll_seconds: float = 30.0
    # Google "Testing" apps' refresh tokens die 7 days after issue; 0 = a published app's never do.
    refresh_token_lifetime: float = 7 * 86400.0


@dataclass(frozen=True, kw_only=True)
class ScanConfig:
    rspamd_url: str = ""
    spamd: str = ""
    clamd: str = ""
    timeout: float = 20.0
    max_size: int = 10485760
    reject_score: float = 15.0
    label_score: float = 6.0
    on_failure: str = "accept"
    allow_from: tuple[str, ...] = ()
    block_from: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.rspamd_url or self.spamd or self.clamd)


@dataclass(frozen=True, kw_only=True)
class BounceConfig:
    mode: str = "reject"
    sender: str = "mailer-daemon@example.com"


@dataclass(frozen=True, kw_only=True)
class AwsConfig:
    region: str = ""
    endpoint_url: str = ""


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9101"
    cloudwatch_namespace: str = ""


@dataclass(frozen=True, kw_only=True)
class Config:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    gmail: GmailConfig = field(default_factory=GmailConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    bounce: BounceConfig = field(default_factory=BounceConfig)
    aws: AwsConfig = field(default_factory=AwsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = ""

    @property
    def data_dir(self) -> Path:
        return Path(self.gateway.data_dir)

    def data_path(self, relative: str) -> Path:
        """A path from the config, resolved against ``gateway.data_dir``."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.data_dir / path


_SECTION_TYPES = {
    "gateway": GatewayConfig, "smtp": SmtpConfig, "checks": ChecksConfig,
    "rules": RulesConfig, "archive": ArchiveConfig, "delivery": DeliveryConfig,
    "gmail": GmailConfig, "scan": ScanConfig, "bounce": BounceConfig, "aws": AwsConfig, "metrics": MetricsConfig,
}
#: Every time-valued key, each taking the same duration syntax ("300", "5m", "1h", "5d" or a
#: number of seconds). A new time-valued key belongs here; a test checks that every float key
#: whose name says time (timeout, seconds, age, backoff, lifetime) is listed.
_DURATION_KEYS = {
    "smtp.command_timeout", "smtp.data_timeout", "smtp.worker_timeout", "checks.dns_timeout", "rules.cache_seconds",
    "delivery.max_age", "delivery.backoff_base", "delivery.backoff_max", "delivery.hang_timeout",
    "gmail.token_poll_seconds", "gmail.refresh_token_lifetime", "scan.timeout",
}
# Durations where 0 means something ("no cache", "never") rather than a mistake.
_ZERO_DURATION_KEYS = {"rules.cache_seconds", "gmail.refresh_token_lifetime"}
_CHOICES = {
    "checks.dmarc": ("enforce", "monitor"),
    "checks.spf_fail": ("tag", "reject"),
    "bounce.mode": ("reject", "dsn"),
    "scan.on_failure": ("accept", "tempfail"),
}
_STORE_SCHEMES = {
    "rules.url": ("sqlite", "dynamodb"),
    "archive.url": ("file", "s3"),
    "gmail.tokens": ("file", "ssm"),
}


def _convert(key: str, value: Any, default: Any) -> Any:
    if key in _DURATION_KEYS:
        return parse_duration(value, allow_zero=key in _ZERO_DURATION_KEYS)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        return tuple(value)
    raise ValueError(f"unsupported value {value!r}")  # pragma: no cover


def _validate(config: Config) -> None:
    """Cross-value checks; each failure names its key."""

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{key}: {why}")

    if not config.gateway.hostname.strip():
        fail("gateway.hostname", "must not be empty")
    if not config.gateway.domains:
        fail("gateway.domains", "must list at least one domain")
    for domain in config.gateway.domains:
        if not domain or "@" in domain or " " in domain:
            fail("gateway.domains", f"not a domain name: {domain!r}")
    if not config.smtp.listen:
        fail("smtp.listen", "must list at least one address")
    for address in config.smtp.listen:
        try:
            parse_hostport(address)
        except ValueError as exc:
            fail("smtp.listen", str(exc))
    positive = {
        "smtp.max_message_size": config.smtp.max_message_size,
        "smtp.max_recipients": config.smtp.max_recipients,
        "smtp.max_connections": config.smtp.max_connections,
        "smtp.max_connections_per_ip": config.smtp.max_connections_per_ip,
        "smtp.command_timeout": config.smtp.command_timeout,
        "smtp.data_timeout": config.smtp.data_timeout,
        "smtp.worker_timeout": config.smtp.worker_timeout,
        "smtp.junk_command_limit": config.smtp.junk_command_limit,
        "checks.dns_timeout": config.checks.dns_timeout,
        "delivery.concurrency": config.delivery.concurrency,
        "gmail.token_poll_seconds": config.gmail.token_poll_seconds,
        "delivery.max_age": config.delivery.max_age,
        "delivery.backoff_base": config.delivery.backoff_base,
        "delivery.backoff_max": config.delivery.backoff_max,
        "delivery.hang_timeout": config.delivery.hang_timeout,
    }
    for key, value in positive.items():
        if value <= 0:
            fail(key, f"must be greater than 0, got {value}")
    if config.smtp.workers < 0:
        fail("smtp.workers", "must be 0 (one per core) or more")
    if config.rules.cache_seconds < 0:
        fail("rules.cache_seconds", "must be 0 or more")
    if bool(config.smtp.tls_cert) != bool(config.smtp.tls_key):
        fail("smtp.tls_cert", "tls_cert and tls_key must be set together")
    for key, path in (("smtp.tls_cert", config.smtp.tls_cert), ("smtp.tls_key", config.smtp.tls_key)):
        if path and not Path(path).is_file():
            fail(key, f"no such file: {path}")
    for server in config.checks.dns_servers:
        try:
            host, _ = parse_hostport(server, default_port=53)
            ipaddress.ip_address(host)
        except ValueError as exc:
            fail("checks.dns_servers", f"{server!r} is not an IP address with an optional port ({exc})")
    if config.delivery.backoff_max < config.delivery.backoff_base:
        fail("delivery.backoff_max", "must not be shorter than delivery.backoff_base")
    if config.metrics.listen:
        try:
            parse_hostport(config.metrics.listen)
        except ValueError as exc:
            fail("metrics.listen", str(exc))
    for label in config.gmail.label_ids:
        if not label.strip():
            fail("gmail.label_ids", "a label id or name must not be empty")
    for key, url in (("gmail.api_endpoint", config.gmail.api_endpoint), ("gmail.token_uri", config.gmail.token_uri)):
        if url and not url.startswith(("https://", "http://")):
            fail(key, f"expected an http(s) URL, got {url!r}")
    _validate_scan(config.scan)
    if "@" not in config.bounce.sender:
        fail("bounce.sender", f"not an address: {config.bounce.sender!r}")


def _validate_scan(scan: ScanConfig) -> None:
    if scan.rspamd_url and not re.match(r"^https?://[^/\s]+", scan.rspamd_url):
        raise ConfigError(f"scan.rspamd_url: expected http://host:port, got {scan.rspamd_url!r}")
    # clamd may also be a unix socket path.
    for key, value in (("scan.spamd", scan.spamd), ("scan.clamd", scan.clamd)):
        if value and not value.startswith("/"):
            try:
                parse_hostport(value)
            except ValueError as exc:
                raise ConfigError(f"{key}: {exc}") from None
    for key, number in (("scan.timeout", scan.timeout), ("scan.max_size", scan.max_size),
                        ("scan.reject_score", scan.reject_score)):
        if number <= 0:
            raise ConfigError(f"{key}: must be greater than 0, got {number}")
    if scan.label_score > scan.reject_score:
        raise ConfigError("scan.label_score: must not be above scan.reject_score")
    for key, entries in (("scan.allow_from", scan.allow_from), ("scan.block_from", scan.block_from)):
        try:
            check_sender_entries(entries)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def load_mapping(data: Mapping[str, Any], *, source: str = "") -> Config:
    """Build a validated Config from parsed TOML (a dict of sections)."""
    sections: dict[str, Any] = {}
    for section_name, section_value in data.items():
        section_type = _SECTION_TYPES.get(section_name)
        if section_type is None:
            raise ConfigError(f"{section_name}: unknown section")
        if not isinstance(section_value, dict):
            raise ConfigError(f"{section_name}: expected a table [{section_name}]")
        defaults = section_type()
        known = {f.name for f in dataclasses.fields(section_type)}
        values: dict[str, Any] = {}
        for key, value in section_value.items():
            full = f"{section_name}.{key}"
            if key not in known:
                raise ConfigError(f"{full}: unknown key")
            try:
                values[key] = _convert(full, value, getattr(defaults, key))
            except ValueError as exc:
                raise ConfigError(f"{full}: {exc}") from None
            choices = _CHOICES.get(full)
            if choices and values[key] not in choices:
                raise ConfigError(f"{full}: expected one of {', '.join(choices)}, got {value!r}")
            schemes = _STORE_SCHEMES.get(full)
            if schemes and values[key].partition("://")[0] not in schemes:
                allowed = ", ".join(f"{s}://" for s in schemes)
                raise ConfigError(f"{full}: expected a URL starting with {allowed}, got {value!r}")
        sections[section_name] = section_type(**values)
    config = Config(**sections, source=source)
    _validate(config)
    return config


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the config named by ``path``, else by SESMAIL_GATEWAY_CONFIG.

    Relative ``gateway.data_dir`` resolves against the config file's folder,
    so ``config/local.toml`` works from any working directory.
    """
    chosen = path or os.environ.get(ENV_VAR)
    if not chosen:
        raise ConfigError(f"no config file: pass --config FILE or set {ENV_VAR}")
    file = Path(chosen)
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{file}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: {exc.strerror}") from None
    config = load_mapping(data, source=str(file))
    data_dir = Path(config.gateway.data_dir).expanduser()
    if not data_dir.is_absolute():
        data_dir = (file.resolve().parent / data_dir).resolve()
    gateway = dataclasses.replace(config.gateway, data_dir=str(data_dir))
    return dataclasses.replace(config, gateway=gateway)
