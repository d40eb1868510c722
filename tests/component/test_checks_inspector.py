"""The bridge between sessions and checks: message bytes are parsed off the event loop."""

from __future__ import annotations

import threading

import pytest

from sesmail_gateway.checks import inspector as inspector_module
from sesmail_gateway.checks.inspector import Inspector
from sesmail_gateway.config import ChecksConfig
from tests.dnsserver import TestDNSServer


async def test_forged_header_removal_runs_off_the_event_loop(dns_server: TestDNSServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The forged-Authentication-Results scan once ran on the loop: one large header froze
    every session of the worker. It is observed here, not replaced."""
    threads: list[str] = []
    real = inspector_module.strip_forged_authentication_results

    def observed(message: bytes, authserv_id: str) -> bytes:
        threads.append(threading.current_thread().name)
        return real(message, authserv_id)

    monkeypatch.setattr(inspector_module, "strip_forged_authentication_results", observed)
    inspector = Inspector(config=ChecksConfig(dns_servers=(dns_server.address,), dns_timeout=0.5), hostname="mx.test")
    try:
        message = b"Authentication-Results: mx.test; dkim=pass\r\nFrom: a@example.org\r\n\r\nbody\r\n"
        inspection = await inspector.inspect(message, ip="192.0.2.1", helo="client.test", mail_from="")
    finally:
        inspector.close()
    assert inspection.content == b"From: a@example.org\r\n\r\nbody\r\n"
    assert threads and threading.main_thread().name not in threads
