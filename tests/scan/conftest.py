"""Scanner fixtures: each real scanner starts once per test session (rspamd and spamd take
seconds to load their rules); tests that stop or pause a scanner get their own clamd."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dnsserver import TestDNSServer
from tests.scanners import ScannerProcess, clamd, rspamd, spamd, started


@pytest.fixture(scope="session")
def rspamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScannerProcess]:
    with TestDNSServer() as dns:
        process = started(lambda: rspamd(tmp_path_factory.mktemp("rspamd"), dns))
        yield process
        process.close()


@pytest.fixture(scope="session")
def spamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScannerProcess]:
    process = started(lambda: spamd(tmp_path_factory.mktemp("spamd")))
    yield process
    process.close()


@pytest.fixture(scope="session")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScannerProcess]:
    process = started(lambda: clamd(tmp_path_factory.mktemp("clamd")))
    yield process
    process.close()


@pytest.fixture
def own_clamd(tmp_path: Path) -> Iterator[ScannerProcess]:
    """A clamd of this test's own, to stop or pause."""
    folder = tmp_path / "clamd"
    folder.mkdir()
    process = clamd(folder).start()
    yield process
    if process.running():
        process.resume()
    process.close()
