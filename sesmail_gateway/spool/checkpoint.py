"""The checkpoint: make durable what the journals must outlive, then let the journals go.

Every second (``run_checkpoints``) what was written since the last one —
the runner's Maildir and archive copies, folders written in the background
— is fsynced, files first and then the folders that name them. Only then
are delivered journal records settled (segments.py deletes a segment once
all of its records are), finished folders tombstoned into done/, and
closed segments deleted. A failed fsync is sticky (``PendingSyncs``): from
then on nothing is retired, and the next start-up replays the journals.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Protocol

from sesmail_gateway import journal
from sesmail_gateway.fsutil import PendingSyncs, fsync_dir
from sesmail_gateway.message import QueueItem
from sesmail_gateway.segments import Segments
from sesmail_gateway.spool.acceptance import Acceptance
from sesmail_gateway.spool.folders import Folders
from sesmail_gateway.spool.layout import DONE, JOURNAL, MESSAGE, META, TMP

log = logging.getLogger(__name__)

# ctime comes from the kernel's coarse clock (a few ms behind time_ns): the done/ sweep keeps a margin.
CLOCK_MARGIN_NS = 1_000_000_000


class Checkpointed(Protocol):
    def checkpoint(self) -> None: ...


async def run_checkpoints(spool: Checkpointed, interval: float = 1.0) -> None:
    """Checkpoint every ``interval`` seconds (in a thread) until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(spool.checkpoint)
        except OSError as exc:
            # Journals stay until a checkpoint succeeds: nothing is lost, disk use grows.
            log.error("spool: checkpoint failed: %s", exc)


class Checkpoint:
    def __init__(self, folders: Folders, acceptance: Acceptance, segments: Segments, syncs: PendingSyncs,
                 *, sweeper: bool) -> None:
        self.folders = folders
        self.root = folders.root
        self.acceptance = acceptance
        self.segments = segments
        self.syncs = syncs
        self.sweeper = sweeper  # one process (the runner's) clears done/; SMTP workers leave it alone
        self._lock = threading.Lock()
        self._finished: list[QueueItem] = []
        self._finishing: set[str] = set()  # finished, not yet tombstoned: not to be delivered again

    def finish(self, item: QueueItem) -> None:
        """The message is delivered from its folder: forget it once what was written for it is durable."""
        with self._lock:
            self._finished.append(item)
            self._finishing.add(item.id)

    def finishing(self, queue_id: str) -> bool:
        """Delivered, and waiting for the checkpoint to retire it: not to be delivered again."""
        return queue_id in self._finishing

    def finishing_ids(self) -> set[str]:
        with self._lock:
            return set(self._finishing)

    def sync_now(self) -> None:
        """Make every folder written so far and everything the runner wrote durable. Blocks.

        The runner calls it only before saving a partial result (rare); the
        common case, a delivered message, waits for the next checkpoint.
        """
        files, folders = self._folder_syncs(self.acceptance.unsynced(), set())
        self.syncs.flush(also_files=files, also_folders=folders)

    def _folder_syncs(self, unsynced: dict[str, Path], skip: set[str]) -> tuple[list[Path], set[Path]]:
        """What makes these folders durable: their files, the folder, its state folder, and tmp/.

        Each folder was renamed into its state from tmp/: a rename is durable
        only once both folders it changed are fsynced (a directory must not be
        left under its old name, which start-up clears as unacknowledged).
        """
        files: list[Path] = []
        folders: set[Path] = set()
        for queue_id, folder in unsynced.items():
            if queue_id in skip:
                continue  # delivered: its folder need never be durable
            files += (folder / MESSAGE, folder / META)
            folders.update((folder, folder.parent, self.root / TMP))
        return files, folders

    def run(self) -> None:
        """fsync what the journals must outlive; then tombstone finished messages and retire journals. Blocks."""
        with self._lock:
            finished, self._finished = self._finished, []
        retiring, unsynced = self.acceptance.hand_over()
        # Deliveries made from journal records: durable first, then their segments may go.
        delivered = self.segments.take_delivered()
        if delivered or self.segments.retirable():
            try:
                self.syncs.flush()  # raises for good once an fsync has failed: then nothing is retired
            except OSError:
                self.segments.undo_take(delivered)
                raise
            self.segments.retire(delivered)
        if finished or retiring or unsynced:  # an idle process syncs nothing
            done = {item.id for item in finished}
            files, folders = self._folder_syncs(unsynced, done)
            try:
                self.syncs.flush(also_files=files, also_folders=folders)
            except OSError:
                with self._lock:  # nothing is retired; the next start-up replays the journals
                    self._finished[:0] = finished
                self.acceptance.take_back(unsynced)
                raise
            if finished:
                sources = {self.folders.folder(item).parent for item in finished}
                for item in finished:
                    self.folders.tombstone(item)
                fsync_dir(self.root / DONE)  # so a replay finds the tombstones ...
                for folder in sources:
                    fsync_dir(folder)  # ... and a restart does not deliver them again
                with self._lock:
                    self._finishing.difference_update(done)
            self.acceptance.delete(retiring)
        if self.sweeper:
            self.sweep_done()

    def oldest_journal_ns(self) -> int | None:
        """When the oldest journal that still holds records was started (None: there is none)."""
        live = []
        for path in journal.journal_files(self.root / JOURNAL):
            try:
                if path.stat().st_size:
                    live.append(journal.created_ns(path))
            except FileNotFoundError:
                continue  # retired by its owner meanwhile
        return min(live) if live else None

    def sweep_done(self) -> None:
        """Delete done/ entries older than every journal that still holds records."""
        oldest = self.oldest_journal_ns()
        horizon = (time.time_ns() if oldest is None else oldest) - CLOCK_MARGIN_NS
        for entry in os.scandir(self.root / DONE):
            try:
                retired_at = entry.stat().st_ctime_ns
            except FileNotFoundError:
                continue
            if retired_at < horizon:
                shutil.rmtree(entry.path, ignore_errors=True)
