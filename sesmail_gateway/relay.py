"""What an SMTP worker tells the main process: metrics, accepted messages, sealed segments.

The worker side batches events and sends them over the worker's pipe; the
main process (``workers.WorkerPool``) applies them to its Metrics and hands
accepted records and sealed segments to the runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from multiprocessing.connection import Connection
from typing import Any

from sesmail_gateway.spool import Accepted


class MetricsRelay:
    """SessionMetrics in a worker: events are batched and sent to the main process.

    It also carries each accepted message's journal record (metadata,
    segment, offset) to the runner at once, and the news that a segment is
    sealed (from the checkpoint's thread: hence the lock).
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._events: list[tuple[str, tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._flush_scheduled = False
        self._accepted = (0, 0)  # messages, bytes
        self._auth: dict[tuple[str, str], int] = {}

    def accepted(self, accepted: Accepted) -> None:
        self._add("accepted", (accepted.meta, accepted.segment, accepted.offset))
        if not self._flush_scheduled:  # one pipe write per turn of the loop, not per message
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        with contextlib.suppress(OSError):  # a broken pipe: the main process is gone
            self.flush()

    def sealed(self, segment: str, broken: bool, records: int) -> None:
        self._add("sealed", (segment, broken, records))

    def _add(self, name: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._events.append((name, args))

    def observe_commit(self, seconds: float, batch: int) -> None:
        self._add("observe_commit", (seconds, batch))

    def message_accepted(self, size: int) -> None:
        with self._lock:  # summed until the next flush: one event per flush, not per message
            self._accepted = (self._accepted[0] + 1, self._accepted[1] + size)

    def refused(self, reason: str) -> None:
        self._add("refused", (reason,))

    def connection_refused(self, outcome: str) -> None:
        self._add("connection_refused", (outcome,))

    def auth_result(self, method: str, result: str) -> None:
        with self._lock:
            self._auth[(method, result)] = self._auth.get((method, result), 0) + 1

    def scan_result(self, scanner: str, result: str, seconds: float) -> None:
        self._add("scan_result", (scanner, result, seconds))

    def queued(self, queue_id: str) -> None:
        self._add("queued", (queue_id,))

    def flush(self, *, heartbeat: bool = False) -> None:
        """Send what was recorded since the last flush; with ``heartbeat``, an empty batch when there is
        nothing (the main process takes a worker that stays silent for ``smtp.worker_timeout`` as frozen)."""
        with self._lock:
            if self._accepted[0]:
                self._events.append(("messages_accepted", self._accepted))
                self._accepted = (0, 0)
            for (method, result), count in self._auth.items():
                self._events.append(("auth_result", (method, result, count)))
            self._auth.clear()
            if not self._events and not heartbeat:
                return
            events, self._events = self._events, []
        # Outside the lock: a full pipe (the main process busy) holds up the event loop's thread, the one
        # sender, not the journal commits and checkpoints that add events meanwhile.
        self._conn.send(("events", events))


APPLICABLE = frozenset({"observe_commit", "messages_accepted", "refused", "connection_refused", "auth_result",
                        "scan_result"})
"""Events the main process applies to its Metrics as they come (the others go to the runner)."""
