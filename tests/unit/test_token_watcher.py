"""Token expiry: the time left, and one warning per threshold crossed."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pytest

from sesmail_gateway.archive.local import FolderArchiver
from sesmail_gateway.config import DeliveryConfig, GmailConfig
from sesmail_gateway.deliver.gmail import GmailDeliverer
from sesmail_gateway.metrics import Metrics
from sesmail_gateway.runner import Runner
from sesmail_gateway.spool import Spool
from sesmail_gateway.tokens import StoredToken
from sesmail_gateway.tokens.file import FileTokenStore
from sesmail_gateway.tokens.watcher import TokenWatcher, seconds_left

DAY = 86400.0


def test_seconds_left() -> None:
    token = StoredToken("a@gmail.test", "r", issued_at=1000.0)
    assert seconds_left(token, 7 * DAY, 1000.0 + DAY) == 6 * DAY
    assert math.isinf(seconds_left(token, 0.0, 1e12))


async def test_warns_once_at_24h_and_once_at_6h(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [time.time()]
    store = FileTokenStore(tmp_path / "tokens")
    store.put(StoredToken("a@gmail.test", "r", issued_at=now[0] - 6 * DAY + 60))  # 24 h minus a minute left
    metrics = Metrics()
    spool = Spool(tmp_path / "spool")
    runner = Runner(spool=spool, archiver=FolderArchiver(tmp_path / "archive"), deliverers={},
                    config=DeliveryConfig(), metrics=metrics)
    deliverer = GmailDeliverer(store=store, client=lambda: None)
    watcher = TokenWatcher(store=store, deliverer=deliverer, runner=runner, metrics=metrics,
                           config=GmailConfig(refresh_token_lifetime=7 * DAY), clock=lambda: now[0])
    caplog.set_level(logging.WARNING)
    for advance in (0, 60, 3600, 17 * 3600, 60, 60, 6 * 3600, 60):  # several polls inside each window
        now[0] += advance
        await watcher.check()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert "expires in 24.0 h" in warnings[0] or "expires in 23.9 h" in warnings[0]
    assert "expires in 6.0 h" in warnings[1] or "expires in 5.9 h" in warnings[1]
    assert "past its assumed lifetime" in warnings[2]
    left = metrics.registry.get_sample_value("sesmail_gmail_token_seconds_left", {"account": "a@gmail.test"})
    assert left is not None and left < 0


async def test_a_token_found_with_hours_left_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    store = FileTokenStore(tmp_path / "tokens")
    store.put(StoredToken("a@gmail.test", "r", issued_at=now - 7 * DAY + 5 * 3600))  # 5 hours left
    metrics = Metrics()
    runner = Runner(spool=Spool(tmp_path / "spool"), archiver=FolderArchiver(tmp_path / "archive"), deliverers={},
                    config=DeliveryConfig(), metrics=metrics)
    watcher = TokenWatcher(store=store, deliverer=GmailDeliverer(store=store, client=lambda: None), runner=runner,
                           metrics=metrics, config=GmailConfig(refresh_token_lifetime=7 * DAY), clock=lambda: now)
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        await watcher.check()
    assert [r.getMessage() for r in caplog.records if "expires in" in r.getMessage()] == [
        caplog.records[0].getMessage()]
