"""What the runner does about destinations that are down: messages parked for them, and the file `queue list` reads.

Destination health itself (who is down, the one probe per backoff step)
is destinations.py. Here: which messages wait in memory for a destination
(parked), which an operator sent to be tried at once whatever the backoff
(forced), resuming the parked ones when their destination works again,
the log lines of a destination going down and coming back, and
``destinations.json`` for `queue list`. The delivery threads call it; the
loop hears of the messages to resume through ``resume``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from sesmail_gateway.destinations import Destinations
from sesmail_gateway.errors import DeliveryError, PermanentFailure, TokenExpired
from sesmail_gateway.message import QueueItem

# The runner's lines keep the package's logger name, whichever of its modules writes them.
log = logging.getLogger(__package__)

DESTINATIONS_FILE = "destinations.json"


class Outages:
    """The runner's side of destination health: parked and forced messages, log lines, ``destinations.json``."""

    def __init__(self, destinations: Destinations, *, root: Path, clock: Callable[[], float],
                 resume: Callable[[dict[str, str]], None]) -> None:
        self.destinations = destinations
        self.clock = clock
        self._resume = resume  # parked messages (queue id -> state) to queue again; called from delivery threads
        self._down_file = root / DESTINATIONS_FILE
        self._parked: set[str] = set()  # waiting in memory for a destination to come back
        self._forced: set[str] = set()  # operator retries: tried at once, destination backoff or not

    # -- which messages wait, which go -------------------------------------

    def force(self, queue_id: str) -> None:
        """An operator's retry or release: its next attempt goes whatever the destinations' backoff says."""
        self._forced.add(queue_id)

    def forced(self, queue_id: str) -> bool:
        """Was the attempt now starting on ``queue_id`` forced? (Once: the next one is not.)"""
        forced = queue_id in self._forced
        self._forced.discard(queue_id)
        return forced

    def admit(self, destination: str, forced: bool) -> bool:
        return forced or self.destinations.admit(destination)

    def all_down(self, item: QueueItem) -> bool:
        """Would none of ``item``'s pending deliveries be let through now, not even as a probe?"""
        return all(not self.destinations.admit_peek(d.key) for d in item.pending())

    def park(self, destination: str, item: QueueItem) -> bool:
        """Let ``item`` wait in memory until ``destination`` works again; False if it is not down."""
        if not self.destinations.park(destination, item.id, item.state):
            return False
        self._parked.add(item.id)
        return True

    def parked(self, queue_id: str) -> bool:
        return queue_id in self._parked

    def unpark(self, queue_id: str) -> bool:
        """``queue_id`` waits no more (an attempt or an operator takes it); False if it was not parked."""
        if queue_id not in self._parked:
            return False
        self._parked.discard(queue_id)
        return True

    # -- destinations going down and coming back ---------------------------

    def came_back(self, destination: str) -> None:
        parked = self.destinations.succeeded(destination)
        if parked is None:
            return  # it was up: the common case, nothing to do
        log.info("runner: %s works again; resuming %d waiting message(s)", destination, len(parked))
        self.write_down_file()
        if parked:
            self._resume(parked)

    def went_down(self, destination: str, error: DeliveryError) -> None:
        if isinstance(error, (TokenExpired, PermanentFailure)):
            return
        new = destination not in self._down_names
        until = self.destinations.failed(destination, str(error), error.retry_after)
        if new:
            log.warning("runner: %s is failing (%s); one probe every backoff step, the rest wait (next probe "
                        "in %.0f s)", destination, error, until - self.clock())
        self.write_down_file()

    @property
    def _down_names(self) -> set[str]:
        return {s.destination for s in self.destinations.status()}

    def write_down_file(self) -> None:
        """What is down, for `queue list` (informational: rewritten at every change, never fsynced)."""
        status = [dataclasses.asdict(s) for s in self.destinations.status()]
        tmp = self._down_file.with_name(f".{self._down_file.name}.tmp")
        try:
            tmp.write_text(json.dumps(status))
            os.replace(tmp, self._down_file)
        except OSError as exc:
            log.warning("runner: cannot write %s: %s", self._down_file, exc)
