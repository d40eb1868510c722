"""The event loop the daemon and its SMTP workers run on: uvloop when it is installed, else asyncio's own.

uvloop (libuv underneath) spends less time per socket event than asyncio's
selector loop, and an SMTP session is mostly socket events: a dozen reads
and writes per message. Everything here uses only the public loop API, so
either loop runs the same code; the unit tests run on asyncio's loop, the
daemon's tests on uvloop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def name() -> str:
    """Which loop ``run`` uses, for the start-up log line."""
    return "uvloop" if loop_factory() is not asyncio.new_event_loop else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop ``loop_factory`` chooses."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
