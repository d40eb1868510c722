"""Connection limits, counted across every SMTP worker process.

``smtp.max_connections`` and ``smtp.max_connections_per_ip`` are limits for
the whole gateway, not per process: with several workers sharing the port,
the counters live in shared memory. Per-IP counts are kept in buckets by a
hash of the address; two addresses that share a bucket share its count,
which can only make the limit stricter, never looser, and with 65,536
buckets that is rare.
"""

from __future__ import annotations

import multiprocessing
import zlib
from collections import Counter
from multiprocessing.context import BaseContext
from typing import Any, Protocol

from sesmail_gateway import replies
from sesmail_gateway.replies import Reply

BUCKETS = 65536


class Limits(Protocol):
    def acquire(self, ip: str) -> Reply | None:
        """Count a new session from ``ip``; None when admitted, else the refusal."""
        ...

    def release(self, ip: str) -> None: ...

    def surplus(self) -> int:
        """How many sessions this process holds beyond the least busy worker (0 with one process)."""
        ...


class LocalLimits:
    """Counters for a gateway whose sessions all run in one process."""

    def __init__(self, *, max_connections: int, max_per_ip: int) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: Counter[str] = Counter()

    def acquire(self, ip: str) -> Reply | None:
        if self.total >= self.max_connections:
            return replies.TOO_MANY_CONNECTIONS
        if self.per_ip[ip] >= self.max_per_ip:
            return replies.TOO_MANY_FROM_IP
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def surplus(self) -> int:
        return 0


class SharedLimits:
    """Counters in shared memory for worker processes: one row per worker.

    Create it in the parent with one slot per worker and pass it to each
    worker, which calls ``bind(slot)``. A worker that dies leaves its row
    behind; ``reset(slot)`` clears it before its replacement starts, so a
    crash never leaks connection counts.
    """

    def __init__(self, *, max_connections: int, max_per_ip: int, slots: int,
                 context: BaseContext | None = None) -> None:
        ctx = context or multiprocessing.get_context("spawn")
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.slots = slots
        self.slot = -1
        self._row = BUCKETS + 1  # [0] is the row's total
        self._counts: Any = ctx.Array("i", slots * self._row)  # a lock comes with it

    def bind(self, slot: int) -> SharedLimits:
        self.slot = slot
        return self

    def reset(self, slot: int) -> None:
        with self._counts.get_lock():
            counts = self._counts.get_obj()
            start = slot * self._row
            counts[start: start + self._row] = [0] * self._row

    @staticmethod
    def _bucket(ip: str) -> int:
        return 1 + zlib.crc32(ip.encode()) % BUCKETS

    def acquire(self, ip: str) -> Reply | None:
        bucket = self._bucket(ip)
        rows = range(0, self.slots * self._row, self._row)
        with self._counts.get_lock():
            counts = self._counts.get_obj()
            if sum(counts[row] for row in rows) >= self.max_connections:
                return replies.TOO_MANY_CONNECTIONS
            if sum(counts[row + bucket] for row in rows) >= self.max_per_ip:
                return replies.TOO_MANY_FROM_IP
            mine = self.slot * self._row
            counts[mine] += 1
            counts[mine + bucket] += 1
        return None

    def release(self, ip: str) -> None:
        bucket = self._bucket(ip)
        with self._counts.get_lock():
            counts = self._counts.get_obj()
            mine = self.slot * self._row
            counts[mine] -= 1
            counts[mine + bucket] -= 1

    def surplus(self) -> int:
        # Read without the lock: a count one session out of date only delays an accept a little.
        counts = self._counts.get_obj()
        totals: list[int] = [counts[row] for row in range(0, self.slots * self._row, self._row)]
        return max(0, totals[self.slot] - min(totals))
