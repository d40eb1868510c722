"""Remote deliveries made, recorded so that a replay after a crash does not make them twice.

A Maildir or archive copy is idempotent by its name: delivering it again
replaces it. A Gmail import is not: Gmail keeps both. So every remote
delivery (anything but ``maildir``) that succeeds is appended here as one
JSON line, and the checkpoint fsyncs the file with everything else the
runner wrote, before any journal segment or spool folder is retired. At
start-up the lines are read back; a message delivered again from its
journal record or its folder skips the deliveries recorded for it. Only an
import that succeeded within the last checkpoint interval before a crash
can be made once more.

The log is kept in generations (``spool/delivered/<created-ns>.log``), one
every ``GENERATION_SECONDS``; a generation is deleted once every journal
segment that existed when it was last written is gone and a checkpoint has
run since (which made the tombstones of messages finished from folders
durable).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from sesmail_gateway.fsutil import PendingSyncs, ensure_dir, fsync_dir
from sesmail_gateway.message import DELIVERED, QueueItem

log = logging.getLogger(__name__)

GENERATION_SECONDS = 60.0
LOCAL_ACTIONS = frozenset({"maildir"})  # idempotent by file name: not recorded


class DeliveredLog:
    def __init__(self, folder: Path, syncs: PendingSyncs) -> None:
        self.folder = ensure_dir(folder)
        self.syncs = syncs
        self._lock = threading.Lock()
        self._fd = -1
        self._path: Path | None = None
        self._opened = 0.0
        self.recorded: set[tuple[str, str]] = set()  # from earlier runs: (queue id, delivery key)

    def load(self) -> int:
        """Read what earlier runs recorded (at start-up, before anything is delivered); returns how many."""
        for path in sorted(self.folder.glob("*.log")):
            try:
                lines = path.read_bytes().splitlines()
            except OSError as exc:
                log.error("delivered: cannot read %s: %s", path, exc)
                continue
            for line in lines:
                try:
                    entry = json.loads(line)
                    self.recorded.add((str(entry["id"]), str(entry["key"])))
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a crash: the import it describes may be made once more
        return len(self.recorded)

    def apply(self, item: QueueItem) -> int:
        """Mark deliveries of ``item`` that an earlier run recorded as made; returns how many."""
        skipped = 0
        for delivery in item.deliveries:
            if delivery.status != DELIVERED and (item.id, delivery.key) in self.recorded:
                delivery.status = DELIVERED
                delivery.last_error = ""
                skipped += 1
        return skipped

    def record(self, item: QueueItem, key: str, action: str) -> None:
        """A remote delivery succeeded: append it (fsynced by the next checkpoint)."""
        if action in LOCAL_ACTIONS:
            return
        line = json.dumps({"id": item.id, "key": key}, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self._fd < 0 or time.monotonic() - self._opened > GENERATION_SECONDS:
                self._rotate()
            os.write(self._fd, line)
            assert self._path is not None
            self.syncs.file(self._path)

    def _rotate(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._path = self.folder / f"{time.time_ns()}.log"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._opened = time.monotonic()
        self.syncs.folder(self.folder)

    def prune(self, oldest_segment_ns: int | None, checkpoint_started_ns: int) -> int:
        """Delete generations no replay can need any more; returns how many."""
        horizon = checkpoint_started_ns if oldest_segment_ns is None else min(oldest_segment_ns, checkpoint_started_ns)
        removed = 0
        with self._lock:
            current = self._path
        for path in self.folder.glob("*.log"):
            if path == current:
                continue
            try:
                if path.stat().st_mtime_ns < horizon:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            fsync_dir(self.folder)
        return removed

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
