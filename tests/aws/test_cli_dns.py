"""`sesmail-gateway dns check` against the project's real DNS test server, with SES DKIM tokens from moto."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.aws.motoserver import Moto, cli
from tests.conftest import run_cli, write_config
from tests.dnsserver import TestDNSServer

AMAZONSES_SPF = {"TXT": ["v=spf1 ip4:199.255.192.0/22 ip4:54.240.0.0/18 -all"]}


@pytest.fixture
def dns_zone() -> Iterator[TestDNSServer]:
    with TestDNSServer({"amazonses.com": AMAZONSES_SPF}) as server:
        yield server


def config_for(tmp_path: Path, moto: Moto, server: TestDNSServer) -> Path:
    return write_config(tmp_path / "gateway.toml", {
        "gateway": {"hostname": "mx.good.test", "domains": ["good.test"], "data_dir": str(tmp_path / "data")},
        "checks": {"dns_servers": [server.address], "dns_timeout": 2.0},
        "aws": moto.aws_section,
    })


def check(config: Path, domain: str) -> tuple[int, dict[str, Any]]:
    done = cli(config, "dns", "check", domain, "--json", check=False)
    return done.returncode, json.loads(done.stdout)


def test_a_complete_domain_passes(tmp_path: Path, moto: Moto, dns_zone: TestDNSServer) -> None:
    tokens = moto.client("ses").verify_domain_dkim(Domain="good.test")["DkimTokens"]
    dns_zone.add("good.test", "MX", (10, "mx.good.test"))
    dns_zone.add("mx.good.test", "A", "192.0.2.10")
    dns_zone.add("good.test", "TXT", "v=spf1 mx include:amazonses.com -all")
    dns_zone.add("_dmarc.good.test", "TXT", "v=DMARC1; p=reject; rua=mailto:d@good.test")
    for token in tokens:
        dns_zone.add(f"{token}._domainkey.good.test", "CNAME", f"{token}.dkim.amazonses.com")
    dns_zone.add("_smtp._tls.good.test", "TXT", "v=TLSRPTv1; rua=mailto:tls@good.test")
    config = config_for(tmp_path, moto, dns_zone)

    status, report = check(config, "good.test")
    assert status == 0 and report["ok"] is True
    by_check = [(c["check"], c["status"]) for c in report["checks"]]
    assert by_check == [("MX", "ok"), ("SPF", "ok"), ("DMARC", "ok"),
                        *[("SES DKIM", "ok")] * len(tokens), ("MTA-STS", "absent"), ("TLS-RPT", "ok")]
    spf = report["checks"][1]["detail"]
    assert "authorises SES" in spf and "/10 DNS lookups" in spf
    text = cli(config, "dns", "check", "good.test").stdout
    assert text.endswith("all required records are in place\n")


def test_missing_records_fail_and_say_exactly_what_to_add(tmp_path: Path, moto: Moto, dns_zone: TestDNSServer) -> None:
    tokens = moto.client("ses").verify_domain_dkim(Domain="bare.test")["DkimTokens"]
    dns_zone.add("bare.test", "MX", (10, "mx.elsewhere.test"))
    dns_zone.add("bare.test", "TXT", "v=spf1 mx -all")
    config = config_for(tmp_path, moto, dns_zone)

    done = run_cli(config, "dns", "check", "bare.test", check=False)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert "  WRONG    MX        MX points at mx.elsewhere.test, not mx.good.test" in lines
    assert "  bare.test. MX 10 mx.good.test." in lines
    assert '  bare.test. TXT "v=spf1 mx include:amazonses.com -all"' in lines
    assert '  _dmarc.bare.test. TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@bare.test"' in lines
    for token in tokens:
        assert f"  {token}._domainkey.bare.test. CNAME {token}.dkim.amazonses.com." in lines
    assert lines[-1] == f"{2 + len(tokens)} required record(s) missing or wrong"
