"""Counting delivered messages in a Maildir tree, for the benchmark targets that deliver into one.

A message is delivered once its file is in a Maildir's ``new/`` or ``cur/``
(``tmp/`` holds deliveries still being written).  Sub-folders (``.Junk``)
are Maildirs of their own under the same root and are counted too.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

POLL_SECONDS = 0.1


def count_messages(root: Path) -> int:
    """Files in every ``new/`` and ``cur/`` directory under ``root`` (0 when it does not exist yet)."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        if Path(folder).name in ("new", "cur"):
            total += len(files)
    return total


@dataclass(frozen=True)
class Drained:
    """How many messages were in the Maildir when :func:`wait_for_messages` returned, and after how long."""

    count: int
    seconds: float


async def wait_for_messages(root: Path, expected: int, timeout: float) -> Drained:
    """Poll until ``root`` holds at least ``expected`` messages, or ``timeout`` seconds have passed."""
    start = time.monotonic()
    while True:
        count = await asyncio.to_thread(count_messages, root)
        waited = time.monotonic() - start
        if count >= expected or waited >= timeout:
            return Drained(count, waited)
        await asyncio.sleep(POLL_SECONDS)
