"""Destination health: an outage costs one probe per backoff step, not one attempt per message.

A destination is where a delivery group goes (``forward-to-gmail:me@gmail.com``,
``maildir:mail``) or the archive. When an attempt to it fails temporarily,
it is down: messages that need it wait in memory (parked, in the spool
state they are in, no disk writes), and one of them is let through as a
probe when the backoff step ends. A probe that succeeds brings the
destination back and every parked message is resubmitted at once; one that
fails doubles the step (Postfix's dead-destination handling is the model).
Thread-safe: the runner's worker threads call it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ARCHIVE = "archive"


@dataclass
class _Down:
    since: float
    until: float
    failures: int = 1
    reason: str = ""
    probing: bool = False
    parked: dict[str, str] = field(default_factory=dict)  # queue id -> spool state it waits in


@dataclass(frozen=True)
class Status:
    destination: str
    since: float
    next_probe: float
    failures: int
    parked: int
    reason: str


class Destinations:
    def __init__(self, *, base: float, cap: float, clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random) -> None:
        self.base = base
        self.cap = cap
        self.clock = clock
        self.rng = rng
        self._down: dict[str, _Down] = {}
        self._lock = threading.Lock()

    def admit(self, destination: str) -> bool:
        """May an attempt go to ``destination`` now? Up: yes. Down: only as the one probe, once its step ended."""
        if not self._down:  # nothing is down: the common case, without the lock
            return True
        with self._lock:
            down = self._down.get(destination)
            if down is None:
                return True
            if down.probing or self.clock() < down.until:
                return False
            down.probing = True
            return True

    def admit_peek(self, destination: str) -> bool:
        """Whether ``admit`` would let an attempt through now, without taking the probe."""
        if not self._down:
            return True
        with self._lock:
            down = self._down.get(destination)
            return down is None or (not down.probing and self.clock() >= down.until)

    def park(self, destination: str, queue_id: str, state: str) -> bool:
        """Keep the message until the destination is back; False if it came back meanwhile."""
        with self._lock:
            down = self._down.get(destination)
            if down is None:
                return False
            down.parked[queue_id] = state
            return True

    def failed(self, destination: str, reason: str, retry_after: float | None = None) -> float:
        """A temporary failure: the destination is down (or stays down); returns when the next probe may go."""
        with self._lock:
            now = self.clock()
            down = self._down.get(destination)
            if down is None:
                down = self._down[destination] = _Down(since=now, until=now)
            else:
                down.failures += 1
            step = min(self.cap, self.base * 2.0 ** (down.failures - 1))
            delay = max(step * (0.5 + 0.5 * self.rng()), retry_after or 0.0)
            down.until = now + delay
            down.reason = reason
            down.probing = False
            return down.until

    def succeeded(self, destination: str) -> dict[str, str] | None:
        """The destination works. None if it was up; else it is up again and the parked messages
        (id -> state) are returned for resubmission."""
        if not self._down:
            return None
        with self._lock:
            down = self._down.pop(destination, None)
        return dict(down.parked) if down is not None else None

    def probe_candidates(self) -> dict[str, tuple[str, str]]:
        """For each down destination whose step has ended and that has no probe out: one parked message."""
        now = self.clock()
        found: dict[str, tuple[str, str]] = {}
        with self._lock:
            for destination, down in self._down.items():
                if not down.probing and now >= down.until and down.parked:
                    queue_id, state = next(iter(down.parked.items()))
                    del down.parked[queue_id]
                    found[destination] = (queue_id, state)
        return found

    def status(self) -> list[Status]:
        with self._lock:
            return [Status(name, d.since, d.until, d.failures, len(d.parked), d.reason)
                    for name, d in sorted(self._down.items())]
