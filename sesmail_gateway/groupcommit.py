"""Group commit: concurrent callers share one flush.

Whoever arrives while a flush runs joins the next one, so N sessions
waiting at once cost one flush, not N, and nobody waits for a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

Job = TypeVar("Job")


class GroupCommit(Generic[Job]):
    """Runs ``flush(jobs)`` in a thread for every batch; each job gets its own result.

    ``flush`` returns one entry per job: None for success or the exception
    that job's caller should see. If ``flush`` itself raises, every caller
    in the batch sees that exception.
    """

    def __init__(self, flush: Callable[[list[Job]], list[BaseException | None]]) -> None:
        self._flush = flush
        self._pending: list[tuple[Job, asyncio.Future[None]]] = []
        self._running: asyncio.Task[None] | None = None

    async def commit(self, job: Job) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(self._flush, [job for job, _ in batch])
            except BaseException as exc:  # the whole flush failed: every waiter hears it
                results = [exc] * len(batch)
            for (_, future), error in zip(batch, results, strict=True):
                if future.done():
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
