"""The bridge between sessions and checks: where a check run happens, and that the place never
changes a verdict. A run whose DNS answers are all cached is done on the event loop; one that
needs DNS, and any message over ``INLINE_LIMIT``, is done in the checks' thread pool."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence

import pytest

from sesmail_gateway.checks import inspector as inspector_module
from sesmail_gateway.checks.headers import RawField
from sesmail_gateway.checks.inspector import INLINE_LIMIT, Inspector
from sesmail_gateway.config import ChecksConfig
from tests.dnsserver import TestDNSServer

IP = "192.0.2.1"
MESSAGE = (b"Authentication-Results: mx.test; dkim=pass\r\nFrom: a@example.org\r\nSubject: hi\r\n\r\n"
           b"body\r\n")


@pytest.fixture
def inspector(dns_server: TestDNSServer) -> Iterator[Inspector]:
    dns_server.add("example.org", "TXT", f"v=spf1 ip4:{IP} -all")
    dns_server.add("_dmarc.example.org", "TXT", "v=DMARC1; p=reject")
    inspector = Inspector(config=ChecksConfig(dns_servers=(dns_server.address,), dns_timeout=0.5),
                          hostname="mx.test")
    yield inspector
    inspector.close()


@pytest.fixture
def strip_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The threads the forged-header scan (the first step of every run) ran in; observed, not replaced."""
    threads: list[str] = []
    real = inspector_module.strip_forged_authentication_results

    def observed(message: bytes, authserv_id: str, fields: Sequence[RawField] | None = None) -> bytes:
        threads.append(threading.current_thread().name)
        return real(message, authserv_id, fields)

    monkeypatch.setattr(inspector_module, "strip_forged_authentication_results", observed)
    return threads


async def test_a_run_with_every_answer_cached_is_done_on_the_loop(
        inspector: Inspector, dns_server: TestDNSServer, strip_threads: list[str]) -> None:
    first = await inspector.inspect(MESSAGE, ip=IP, helo="client.test", mail_from="a@example.org")
    sent = dns_server.query_count()
    assert (inspector.pooled_runs, inspector.inline_runs) == (1, 0) and sent > 0
    second = await inspector.inspect(MESSAGE, ip=IP, helo="client.test", mail_from="a@example.org")
    assert (inspector.pooled_runs, inspector.inline_runs) == (1, 1)
    assert dns_server.query_count() == sent
    assert strip_threads[-1] == threading.current_thread().name
    assert first.verdicts.spf.result == second.verdicts.spf.result == "pass"
    assert first.verdicts.dmarc.result == second.verdicts.dmarc.result == "pass"
    assert first.header == second.header and first.decision == second.decision
    assert second.content == b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"  # ours removed inline too


async def test_a_run_missing_an_answer_is_done_again_in_the_pool(
        inspector: Inspector, dns_server: TestDNSServer, strip_threads: list[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """SPF is cached by the MAIL FROM check; DMARC is not. The run from the cache would say
    dmarc=temperror: it is thrown away, and the pool's run (which asks DNS) gives the verdicts."""
    spf = await inspector.check_sender(ip=IP, helo="client.test", mail_from="a@example.org")
    assert spf.result == "pass" and inspector.pooled_runs == 1
    asked = dns_server.query_count("_dmarc.example.org")
    with caplog.at_level(logging.DEBUG):
        inspection = await inspector.inspect(MESSAGE, ip=IP, helo="client.test", mail_from="a@example.org", spf=spf)
    assert inspection.verdicts.dmarc.result == "pass"
    assert dns_server.query_count("_dmarc.example.org") == asked + 1
    assert (inspector.pooled_runs, inspector.inline_runs) == (2, 0)
    assert strip_threads[0] == threading.current_thread().name  # tried here first
    assert strip_threads[-1] != threading.current_thread().name  # then done in the pool
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    again = await inspector.check_sender(ip=IP, helo="client.test", mail_from="a@example.org")
    assert again == spf and inspector.inline_runs == 1


async def test_a_message_over_the_inline_limit_is_inspected_in_the_pool(
        inspector: Inspector, strip_threads: list[str]) -> None:
    """A big header (forged results included) never holds the loop, even with every answer cached."""
    await inspector.inspect(MESSAGE, ip=IP, helo="client.test", mail_from="a@example.org")
    await inspector.inspect(MESSAGE, ip=IP, helo="client.test", mail_from="a@example.org")
    assert inspector.inline_runs == 1
    big = b"".join(b"X-Filler-%d: %s\r\n" % (n, b"y" * 900) for n in range(INLINE_LIMIT // 900)) + MESSAGE
    inspection = await inspector.inspect(big, ip=IP, helo="client.test", mail_from="a@example.org")
    assert inspector.inline_runs == 1 and inspector.pooled_runs == 2
    assert strip_threads[-1] != threading.current_thread().name
    assert b"Authentication-Results: mx.test" not in inspection.content
    assert inspection.verdicts.dmarc.result == "pass"
