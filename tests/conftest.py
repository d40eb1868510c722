"""Shared fixtures: a real gateway daemon on 127.0.0.1, driven over real SMTP.

The helpers themselves live in tests/helpers.py; the names are re-exported
here because tests import them from ``conftest`` too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sesmail_gateway.checks.dns import Resolver
from tests.dnsserver import TestDNSServer
from tests.gmailserver import GmailTestServer
from tests.gmailserver import certificate as gmail_certificate
from tests.helpers import (  # noqa: F401  (re-exported for tests that import them from conftest)
    ROOT,
    Gateway,
    free_port,
    parse,
    run_cli,
    toml_value,
    wait_for,
    without_auth_results,
    write_config,
)


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(overrides: dict[str, dict[str, Any]] | None = None, *, start: bool = True, subdir: str = "") -> Gateway:
        folder = tmp_path / subdir if subdir else tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        gateway = Gateway(folder, overrides)
        started.append(gateway)
        return gateway.start() if start else gateway

    yield make
    for gateway in started:
        if gateway.proc is not None and gateway.proc.poll() is None:
            gateway.kill_all()
        gateway.dns.stop()


@pytest.fixture
def dns_server() -> Iterator[TestDNSServer]:
    """A real DNS server (UDP+TCP) on 127.0.0.1 with an empty zone."""
    with TestDNSServer() as server:
        yield server


@pytest.fixture
def resolver(dns_server: TestDNSServer) -> Resolver:
    return Resolver([dns_server.address], timeout=0.5)


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway()


os.environ.pop("SESMAIL_GATEWAY_CONFIG", None)
# httplib2 reads its CA bundle once, when first imported (test collection may import it): trust the
# local Gmail test server's certificate from the start. Nothing in the tests reaches another HTTPS server.
os.environ["HTTPLIB2_CA_CERTS"] = str(gmail_certificate()[0])


@pytest.fixture
def gmail(monkeypatch: pytest.MonkeyPatch) -> Iterator[GmailTestServer]:
    """The local Gmail-speaking HTTPS server; this process and the daemons it starts trust its certificate."""
    import httplib2

    server = GmailTestServer().start()
    for key, value in server.env().items():  # child processes (daemon, CLI) read these
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(httplib2, "CA_CERTS", str(server.cert))  # read once, at httplib2's first import
    yield server
    server.stop()
