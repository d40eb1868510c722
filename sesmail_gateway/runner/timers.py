"""When each deferred message is due for its next attempt: a heap the scheduler task sleeps on.

On the loop only: the heap and the event that wakes the scheduler early
(a timer sooner than the one it sleeps for) are not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq


class Timers:
    """The deferred messages' due times (on the loop)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._wake = asyncio.Event()

    def add(self, when: float, queue_id: str) -> None:
        """``queue_id`` is due at ``when``; a sleeping scheduler wakes to see whether that is sooner."""
        heapq.heappush(self._heap, (when, queue_id))
        self._wake.set()

    def due(self, now: float) -> list[str]:
        """The messages due by ``now``, taken off the heap."""
        due = []
        while self._heap and self._heap[0][0] <= now:
            due.append(heapq.heappop(self._heap)[1])
        return due

    async def sleep(self, now: float) -> None:
        """Until the next timer, at most a second, or until one is armed."""
        wait = min(self._heap[0][0] - now, 1.0) if self._heap else 1.0
        self._wake.clear()
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that lands as the
        # wait ends, and the scheduler would then never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(wait, 0.01)):
                await self._wake.wait()
