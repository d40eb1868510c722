"""Attempts under way: one attempt or operator action per message at a time, and the ones that never end.

A message is reserved by whoever works on it (a delivery attempt, an
operator action); the others wait or give up. Each delivery attempt is
written to an attempt log as it starts and ends, so the next start-up knows
which attempts took the daemon down, and timed, so one that hangs makes the
daemon report itself unhealthy. Both count as crashes of that message
(POISON_LIMIT, attempt.py). Thread-safe: the delivery threads and operator
actions call it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

# The runner's lines keep the package's logger name, whichever of its modules writes them.
log = logging.getLogger(__package__)

# A message whose delivery attempts crash this many times is held instead of tried again.
POISON_LIMIT = 3
ATTEMPTS = "attempts.log"


class AttemptLog:
    """Which delivery attempts were under way when the daemon died, from an append-only log.

    One line when an attempt starts and one when it ends, written without
    fsync: it must survive the daemon dying (the page cache does), not a
    power cut (which does not repeat on the same message). At start-up the
    attempts that never ended are the ones that took the daemon down.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def interrupted(self) -> list[str]:
        """Attempts left open by the previous run; the log starts afresh."""
        try:
            lines = self.path.read_bytes().decode("ascii", "replace").splitlines()
        except FileNotFoundError:
            lines = []
        open_ids: dict[str, None] = {}
        for line in lines:
            mark, _, queue_id = line.partition(" ")
            if mark == "S":
                open_ids[queue_id] = None
            elif mark == "E":
                open_ids.pop(queue_id, None)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return list(open_ids)

    def started(self, queue_id: str) -> None:
        if self._fd >= 0:
            os.write(self._fd, f"S {queue_id}\n".encode())

    def ended(self, queue_id: str) -> None:
        if self._fd >= 0:
            os.write(self._fd, f"E {queue_id}\n".encode())


class InFlight:
    """The messages someone is working on right now, and how long each delivery attempt has run."""

    def __init__(self, root: Path, *, hang_seconds: float) -> None:
        """``hang_seconds`` (delivery.hang_timeout): an attempt running this long is taken as hung, the daemon
        reports itself unhealthy so systemd's watchdog restarts it, and the attempt log then counts the
        attempt as a crash (POISON_LIMIT)."""
        self.hang_seconds = hang_seconds
        self._reserved: set[str] = set()
        self._changed = threading.Condition()
        self._started: dict[str, float] = {}  # queue id -> monotonic start of its attempt under way
        self._reported_hung: set[str] = set()
        self._log = AttemptLog(root / ATTEMPTS)

    def interrupted(self) -> list[str]:
        """The delivery attempts the previous run left open (they took it down); the attempt log starts afresh."""
        return self._log.interrupted()

    def reserve(self, queue_id: str, wait: float = 0.0) -> bool:
        """Keep every other attempt or action off ``queue_id``; False if one still holds it after ``wait`` s."""
        with self._changed:
            if not self._changed.wait_for(lambda: queue_id not in self._reserved, timeout=wait):
                return False
            self._reserved.add(queue_id)
            return True

    def unreserve(self, queue_id: str) -> None:
        with self._changed:
            self._reserved.discard(queue_id)
            self._changed.notify_all()

    @contextlib.contextmanager
    def attempt(self, queue_id: str) -> Iterator[None]:
        """A delivery attempt on ``queue_id``, which the caller reserved: logged and timed; unreserved at its end."""
        self._log.started(queue_id)
        self._started[queue_id] = time.monotonic()
        try:
            yield
        finally:
            self._started.pop(queue_id, None)
            # Ended, whatever the outcome (an exception is counted by the caller); only a daemon that
            # dies in the middle leaves the attempt open.
            self._log.ended(queue_id)
            self.unreserve(queue_id)

    def hung(self) -> dict[str, float]:
        """Attempts under way for longer than ``hang_seconds``: queue id -> seconds. Logged once each."""
        now = time.monotonic()
        found = {queue_id: now - started for queue_id, started in list(self._started.items())
                 if now - started > self.hang_seconds}
        for queue_id in found.keys() - self._reported_hung:
            log.error("runner: the delivery attempt of %s has run for %.0f s and is taken as hung; the daemon "
                      "reports itself unhealthy so the watchdog restarts it (%d such attempts hold the message)",
                      queue_id, found[queue_id], POISON_LIMIT)
        self._reported_hung = set(found)
        return found
