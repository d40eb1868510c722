"""The daemon's event loop: uvloop when installed, asyncio's own loop when it is not."""

from __future__ import annotations

import asyncio
import sys

import pytest

from sesmail_gateway import eventloop


async def running_loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_runs_the_daemon_when_it_is_installed() -> None:  # a dependency wherever it builds
    assert eventloop.name() == "uvloop"
    assert eventloop.run(running_loop_module()).startswith("uvloop")


def test_without_uvloop_asyncio_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert eventloop.name() == "asyncio"
    assert eventloop.run(running_loop_module()).startswith("asyncio")
