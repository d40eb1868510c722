"""Journal segments as the queue: which records are unsettled, and when a segment may go.

Every accepted message is a record in the acceptance journal of the SMTP
process that took it (journal.py); each journal file is a segment. The
runner delivers a record straight from memory, or from the segment file
when another process wrote it, without a spool folder. A record is
*settled* when

- it is delivered and what the delivery wrote is durable: the checkpoint
  that fsyncs the Maildir and archive files has run since (``delivered``,
  then ``retire``);
- it has a spool folder that is durable: it was deferred, held, dead,
  refused at DATA, or waited too long (``settled``); or
- recovery found it in a folder or a tombstone already.

A segment is deleted once its writer has sealed it (no more appends) and
every record in it is settled. A segment whose fdatasync failed is never
deleted by this process: the next start-up replays it.

Start-up and the death of an SMTP worker *adopt* segments that no live
process holds: every record not seen yet is handed to the runner again.
Deliveries are idempotent (deterministic Maildir and archive names), so a
record delivered before a crash is at worst delivered once more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sesmail_gateway import journal
from sesmail_gateway.fsutil import fsync_dir

log = logging.getLogger(__name__)


@dataclass
class Segment:
    path: Path
    seen: set[str] = field(default_factory=set)  # every record's id, settled or not
    unsettled: set[str] = field(default_factory=set)
    sealed: float = 0.0  # when its writer sealed it (0: still being appended to)
    records: int = 0  # how many records its writer appended, as told when sealing
    broken: bool = False
    fd: int = -1  # opened for reading records another process wrote


class Segments:
    """The runner's view of the journal segments (thread-safe)."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.folder = folder
        self._clock = clock
        self._lock = threading.Lock()
        self._segments: dict[str, Segment] = {}
        self._where: dict[str, str] = {}  # unsettled queue id -> segment name
        self._delivered: list[str] = []  # delivered since the last checkpoint began
        self.retired = 0

    def _segment(self, name: str) -> Segment:
        segment = self._segments.get(name)
        if segment is None:
            segment = self._segments[name] = Segment(self.folder / name)
        return segment

    def accepted(self, name: str, queue_id: str) -> bool:
        """A record of segment ``name`` is to be delivered; False if this segment's record was seen before."""
        with self._lock:
            segment = self._segment(name)
            if queue_id in segment.seen:
                return False
            segment.seen.add(queue_id)
            segment.unsettled.add(queue_id)
            self._where[queue_id] = name
            return True

    def known(self, name: str, queue_id: str) -> None:
        """A record that needs nothing (already in a folder or retired): seen, and settled."""
        with self._lock:
            self._segment(name).seen.add(queue_id)

    def sealed(self, name: str, broken: bool = False, records: int = 0) -> None:
        """Its writer appends no more, and appended ``records`` (a broken segment is kept for the next start-up).

        Until every one of those records has been seen (``accepted`` or
        ``known``; news of the seal may overtake news of the last records)
        the segment is not deleted.
        """
        with self._lock:
            segment = self._segment(name)
            segment.sealed = segment.sealed or self._clock()
            segment.broken = segment.broken or broken
            segment.records = max(segment.records, records)

    def settled(self, queue_id: str) -> None:
        """The record's message is durable elsewhere now (its folder is fsynced)."""
        with self._lock:
            self._settle(queue_id)

    def delivered(self, queue_id: str) -> None:
        """Delivered; settled once the next checkpoint has made what the delivery wrote durable."""
        with self._lock:
            self._delivered.append(queue_id)

    def undo_take(self, delivered: list[str]) -> None:
        """The flush failed: these stay unsettled (the next start-up replays their segments)."""
        with self._lock:
            self._delivered[:0] = delivered

    def seen(self, name: str, queue_id: str) -> bool:
        with self._lock:
            segment = self._segments.get(name)
            return segment is not None and queue_id in segment.seen

    def _settle(self, queue_id: str) -> None:
        name = self._where.pop(queue_id, None)
        if name is not None:
            self._segments[name].unsettled.discard(queue_id)

    def take_delivered(self) -> list[str]:
        """Before the checkpoint's flush: the deliveries that flush will make durable."""
        with self._lock:
            delivered, self._delivered = self._delivered, []
            return delivered

    def retire(self, delivered: list[str]) -> int:
        """After the flush: settle ``delivered``; delete every sealed segment with nothing unsettled."""
        with self._lock:
            for queue_id in delivered:
                self._settle(queue_id)
            done = [s for s in self._segments.values()
                    if s.sealed and not s.unsettled and not s.broken and len(s.seen) >= s.records]
            for segment in done:
                del self._segments[segment.path.name]
        for segment in done:
            if segment.fd >= 0:
                os.close(segment.fd)
            segment.path.unlink(missing_ok=True)
        if done:
            fsync_dir(self.folder)
            self.retired += len(done)
        return len(done)

    def retirable(self) -> bool:
        """Whether some segment is sealed (a checkpoint may have one to delete)."""
        with self._lock:
            return any(s.sealed and not s.broken for s in self._segments.values())

    def waiting(self) -> int:
        """Records not settled, less those delivered and waiting only for the checkpoint."""
        with self._lock:
            return max(0, len(self._where) - len(self._delivered))

    def waiting_since(self, sealed_before: float) -> set[str]:
        """Unsettled records of segments sealed before ``sealed_before`` (monotonic clock)."""
        with self._lock:
            return {queue_id for s in self._segments.values() if s.sealed and s.sealed < sealed_before
                    for queue_id in s.unsettled}

    def read(self, name: str, offset: int) -> journal.Record:
        """The record at ``offset`` of segment ``name`` (ValueError if damaged; OSError if unreadable)."""
        with self._lock:
            segment = self._segment(name)
            if segment.fd < 0:
                segment.fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
            fd = segment.fd
        return journal.read_record_at(fd, offset)

    def tracked(self, name: str) -> bool:
        with self._lock:
            return name in self._segments

    def close(self) -> None:
        with self._lock:
            for segment in self._segments.values():
                if segment.fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(segment.fd)
                    segment.fd = -1
