"""Accepted messages the runner holds as their journal records, before (and mostly instead of) a folder.

A message comes as the record its SMTP process journaled (``accept``), or
from the journal segments of a process that is gone (``adopt``). It waits
here until a delivery thread takes it (``begin``); while that attempt is
under way its bytes are held here (read back from the segment if the
record came without them). A message
delivered from here never gets a spool folder: its segment goes once the
delivery is durable. One that must outlive its segment (deferred, held,
dead, refused at DATA, parked, touched by an operator, or not tried within
BACKLOG_SECONDS) gets a durable folder in its state (``ensure_folder``).
Thread-safe for one attempt per message: the loop adds, the delivery
threads take.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from sesmail_gateway.delivered import LOCAL_ACTIONS, DeliveredLog
from sesmail_gateway.message import DELIVERED, QueueItem, StoredMessage
from sesmail_gateway.metrics import Metrics
from sesmail_gateway.spool import Accepted, Spool

# The runner's lines keep the package's logger name, whichever of its modules writes them.
log = logging.getLogger(__package__)

# A queue entry for a message delivered from its journal record (it has no folder).
MEMORY = "memory"
# A message accepted but not yet tried this long after its journal segment was sealed gets a folder
# (the runner is behind: the backlog lives in folders, where `queue list` shows it, not in memory).
BACKLOG_SECONDS = 5.0


class Journaled:
    """The accepted messages without a folder: waiting to be tried, or under way."""

    def __init__(self, *, spool: Spool, delivered_log: DeliveredLog, metrics: Metrics,
                 submit: Callable[[str], None]) -> None:
        self.spool = spool
        self.delivered_log = delivered_log
        self.metrics = metrics
        self._submit = submit  # a message to try (on the loop)
        self._waiting: dict[str, Accepted] = {}  # accepted, waiting to be tried from the journal record
        self._under_way: dict[str, StoredMessage] = {}  # under way, still without a folder

    # -- where they come from (on the loop) ----------------------------------

    def accept(self, accepted: Accepted) -> None:
        """A message was just journaled (this process or a worker): deliver it from the record. On the loop."""
        if self.spool.segments.accepted(accepted.segment, accepted.item.id):
            self._take(accepted)

    def accept_record(self, meta: bytes, segment: str, offset: int) -> None:
        """``accept`` for a record an SMTP worker process journaled (its metadata as sent over the pipe)."""
        self.accept(Accepted(QueueItem.from_dict(json.loads(meta)), segment, offset))

    def _take(self, accepted: Accepted) -> None:
        self._waiting[accepted.item.id] = accepted
        self._submit(accepted.item.id)

    def orphaned(self, pid: int | None, idle_for: float) -> list[Accepted]:
        """The records of orphaned journal segments (start-up; or SMTP worker ``pid`` died). Blocks."""
        return list(self.spool.adopt(self.spool.orphaned_segments(pid, idle_for=idle_for)))

    def adopt(self, found: list[Accepted]) -> tuple[int, int, int]:
        """Deliver ``orphaned`` records: how many; how many remote deliveries were skipped as made, and how
        many may be made twice. On the loop."""
        skipped = repeated = 0
        for accepted in found:
            skipped += self.delivered_log.apply(accepted.item)
            repeated += sum(1 for d in accepted.item.pending() if d.action not in LOCAL_ACTIONS)
            self._take(accepted)
        self.metrics.replayed.labels(outcome="skipped").inc(skipped)
        self.metrics.replayed.labels(outcome="repeated").inc(repeated)
        return len(found), skipped, repeated

    def prune_delivered(self) -> None:
        """Drop generations of the delivered log older than every journal segment and than a minute ago."""
        self.delivered_log.prune(self.spool.oldest_journal_ns(), time.time_ns() - 60_000_000_000)

    # -- one attempt (in a delivery thread) ----------------------------------

    def waiting(self, queue_id: str) -> Accepted | None:
        """The record of ``queue_id`` if it waits to be tried."""
        return self._waiting.get(queue_id)

    def begin(self, queue_id: str) -> Accepted | None:
        """Take a waiting message for its attempt; None if it waits no more (it was given its folder)."""
        accepted = self._waiting.pop(queue_id, None)
        if accepted is None:
            return None
        self._under_way[queue_id] = self._message_of(accepted)
        return accepted

    def holds(self, queue_id: str) -> bool:
        """Is ``queue_id`` under way without a folder?"""
        return queue_id in self._under_way

    def message(self, queue_id: str) -> StoredMessage:
        return self._under_way[queue_id]

    def now_at(self, queue_id: str, message: StoredMessage) -> None:
        """Read ``queue_id`` from ``message`` from now on (a file: its bytes are no longer held)."""
        self._under_way[queue_id] = message

    def delivered(self, queue_id: str) -> bool:
        """Delivered from its record: its journal segment goes when this is durable. False if it has a folder."""
        if self._under_way.pop(queue_id, None) is None:
            return False
        self.spool.segments.delivered(queue_id)
        return True

    def _message_of(self, accepted: Accepted) -> StoredMessage:
        if accepted.data is not None:
            return StoredMessage.of(accepted.data)
        return StoredMessage.of(self.spool.segments.read(accepted.segment, accepted.offset).message)

    # -- folders -----------------------------------------------------------

    def ensure_folder(self, item: QueueItem) -> None:
        """A message delivered from its journal record that must outlive it: a durable folder in its state."""
        message = self._under_way.pop(item.id, None)
        if message is None:
            return
        if any(d.status == DELIVERED for d in item.deliveries):
            self.spool.sync_now()  # the folder must not record a delivery whose copy is not durable yet
        self.spool.materialize(item, message.read())
        self.spool.segments.settled(item.id)

    def write_waiting(self, queue_id: str) -> bool:
        """A message accepted and not tried yet gets its folder now (it is tried from there); False if none waits."""
        accepted = self.begin(queue_id)
        if accepted is None:
            return False
        self.ensure_folder(accepted.item)
        return True

    def write_overdue(self) -> int:
        """Give a folder to every message not tried yet from a segment sealed BACKLOG_SECONDS ago or earlier."""
        return self._write_backlog(time.monotonic() - BACKLOG_SECONDS)

    def write_all(self) -> int:
        """Give a folder to every message not tried yet (the runner stops)."""
        return self._write_backlog(None)

    def _write_backlog(self, sealed_before: float | None) -> int:
        """Give a folder to every message not tried yet from a segment sealed before ``sealed_before`` (None: all)."""
        waiting = set(self._waiting) if sealed_before is None else self.spool.segments.waiting_since(sealed_before)
        written = 0
        for queue_id in waiting:
            written += self.write_waiting(queue_id)  # False: under way, or written already
        if written and sealed_before is not None:
            log.warning("runner: %d accepted message(s) waited over %.0f s; written to the queue's folders",
                        written, BACKLOG_SECONDS)
        return written
