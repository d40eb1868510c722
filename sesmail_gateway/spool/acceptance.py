"""Acceptance: a message is durable in this process's journal segment before the session answers 250.

``enqueue`` appends the message to the segment and fdatasyncs it; the
segment's name was made durable when it was created (journal.py). One
append and one fdatasync serve every session that arrived meanwhile (group
commit), and no file is created on that path.

With a runner attached (``on_accepted``), that is all acceptance writes:
the runner gets the record (the bytes, or where to read them) and delivers
it without a folder. Without one (a spool used on its own), each message's
folder is written in the background, and the checkpoint makes it durable
before the segment is deleted (checkpoint.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sesmail_gateway import journal
from sesmail_gateway.fsutil import PendingSyncs, fsync_dir
from sesmail_gateway.groupcommit import GroupCommit
from sesmail_gateway.message import INCOMING, QueueItem
from sesmail_gateway.spool.folders import Folders
from sesmail_gateway.spool.layout import JOURNAL, TMP, encode

log = logging.getLogger(__name__)

# Accepted messages up to this size reach the runner as bytes; larger ones are read back from the journal.
IN_MEMORY_MAX = 64 * 1024

# Messages journaled but not yet written to their folders are held in memory;
# past this many, new acceptances wait (backpressure instead of unbounded memory).
MAX_UNWRITTEN = 512


@dataclass
class Accepted:
    """A message durable in a journal segment, for the runner to deliver without a spool folder.

    ``data`` holds the bytes when the runner is in the process that took
    the message; otherwise the runner reads the record at ``offset``.
    """

    item: QueueItem
    segment: str
    offset: int
    data: bytes | None = None
    meta: bytes = b""  # the record's metadata as journaled (what a worker sends the runner)


@dataclass
class _Accept:
    item: QueueItem
    meta: bytes
    chunks: tuple[bytes, ...]
    journal: journal.Journal | None = None
    offset: int = 0  # of its record in the journal


class Acceptance:
    """This process's journal segments and what acceptance leaves for the checkpoint."""

    def __init__(
        self,
        folders: Folders,
        syncs: PendingSyncs,
        *,
        on_commit: Callable[[float, int], None] | None = None,
    ) -> None:
        self.folders = folders
        self.root = folders.root
        self.syncs = syncs  # its ``failed`` is set when a journal fdatasync fails
        self.on_commit = on_commit
        self.on_ready: Callable[[str], None] | None = None  # told each queue id whose folder is written
        self.on_accepted: Callable[[Accepted], None] | None = None
        self.on_sealed: Callable[[str, bool, int], None] | None = None
        self._accepts: GroupCommit[_Accept] = GroupCommit(self._commit_accepts)
        self._writes: GroupCommit[_Accept] = GroupCommit(self._write_folders)
        self._room: asyncio.Semaphore | None = None
        self.writing: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()
        self.journal: journal.Journal | None = None  # the segment appended to now
        self.closed: list[journal.Journal] = []  # closed segments whose folders are not all written yet
        self._unsynced: dict[str, Path] = {}  # folders written without fsync, by queue id

    async def enqueue(self, item: QueueItem, *chunks: bytes) -> None:
        """Store the message durably in ``item.state``; raises OSError on any failure.

        When this returns the message survives a crash; its folder may appear
        a moment later (``on_ready`` says when).
        """
        job = _Accept(item, encode(item), chunks)
        if self.on_accepted is not None:
            await self._accepts.commit(job)
            assert job.journal is not None
            # Small messages go to the runner in memory; larger ones it reads back from the journal.
            data = b"".join(chunks) if sum(len(c) for c in chunks) <= IN_MEMORY_MAX else None
            self.on_accepted(Accepted(item, job.journal.path.name, job.offset, data, job.meta))
            return
        if self._room is None:
            self._room = asyncio.Semaphore(MAX_UNWRITTEN)
        await self._room.acquire()
        try:
            await self._accepts.commit(job)
        except BaseException:
            self._room.release()
            raise
        task = asyncio.create_task(self._write_in_background(job))
        self.writing.add(task)
        task.add_done_callback(self.writing.discard)

    def _commit_accepts(self, jobs: list[_Accept]) -> list[BaseException | None]:
        started = time.perf_counter()
        buffers = [buf for job in jobs for buf in journal.encode(job.meta, job.chunks)]
        with self._lock:
            if self.journal is None:
                self.journal = journal.Journal(self.root / JOURNAL)
            try:
                offset = self.journal.append(buffers)
            except OSError as exc:
                # Every session of the batch hears 451; later batches go to a fresh file,
                # so no torn record can stand in front of an acknowledged one.
                if self.journal.broken:  # the fdatasync itself failed: trust no later flush
                    self.syncs.failed = self.syncs.failed or exc
                    log.critical("spool: journal fdatasync failed (%s); journals are kept for the next "
                                 "start-up from now on", exc)
                self._retire_current()
                raise
            self.journal.pending += len(jobs)
            self.journal.records += len(jobs)
            for job in jobs:
                job.journal = self.journal
                job.offset = offset
                offset += journal.record_size(job.meta, sum(len(c) for c in job.chunks))
        if self.on_commit:
            self.on_commit(time.perf_counter() - started, len(jobs))
        return [None] * len(jobs)

    # -- folders written in the background (no runner in this process) -------------------------

    async def _write_in_background(self, job: _Accept) -> None:
        delay = 1.0
        try:
            while True:
                try:
                    await self._writes.commit(job)
                    break
                except OSError as exc:
                    # The journal holds the message (and keeps it until this succeeds): try again.
                    log.error("spool: cannot write %s to its folder yet (retry in %.0fs): %s", job.item.id, delay, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 60.0)
        finally:
            assert self._room is not None
            self._room.release()
        if self.on_ready and job.item.state == INCOMING:
            self.on_ready(job.item.id)

    def _write_folders(self, jobs: list[_Accept]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for job in jobs:
            tmp = self.root / TMP / job.item.id
            folder = self.folders.folder(job.item)
            try:
                self.folders.write_tmp(tmp, job.meta, job.chunks, sync=False)
                os.rename(tmp, folder)
                results.append(None)
            except OSError as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                results.append(exc)
                continue
            with self._lock:
                assert job.journal is not None
                job.journal.pending -= 1
                self._unsynced[job.item.id] = folder
        return results

    # -- what the checkpoint takes -----------------------------------------

    def _retire_current(self) -> None:
        """The current journal takes no more records (under the lock): sealed for the runner, or closed."""
        assert self.journal is not None
        if self.on_sealed is not None:
            self.journal.seal()
            self.on_sealed(self.journal.path.name, self.journal.broken, self.journal.records)
        else:
            self.closed.append(self.journal)
        self.journal = None

    def hand_over(self) -> tuple[list[journal.Journal], dict[str, Path]]:
        """At a checkpoint: close the current segment; the closed ones whose folders are all written, and
        the folders written since the last checkpoint (to be made durable before those segments go)."""
        with self._lock:
            if self.journal is not None and self.journal.size:
                self._retire_current()
            retiring = [j for j in self.closed if j.pending == 0]
            unsynced, self._unsynced = self._unsynced, {}
        return retiring, unsynced

    def take_back(self, unsynced: dict[str, Path]) -> None:
        """The checkpoint failed: these folders are still not durable."""
        with self._lock:
            self._unsynced.update(unsynced)

    def unsynced(self) -> dict[str, Path]:
        with self._lock:
            return dict(self._unsynced)

    def forget(self, queue_id: str) -> None:
        """The message's folder moved to another state durably: nothing left to fsync where it was."""
        with self._lock:
            self._unsynced.pop(queue_id, None)

    def delete(self, retiring: list[journal.Journal]) -> None:
        """Delete segments whose every message is durable elsewhere (after the checkpoint's fsyncs)."""
        for old in retiring:
            old.discard()
        if retiring:
            fsync_dir(self.root / JOURNAL)
        with self._lock:
            self.closed = [j for j in self.closed if j not in retiring]

    async def finish_writes(self, timeout: float) -> None:
        """At shutdown: let background folder writes end (what cannot be written stays in the journal)."""
        if self.writing:
            _, stuck = await asyncio.wait(self.writing, timeout=timeout)
            for task in stuck:
                task.cancel()  # its journal is not retired: the next start-up restores the message

    def discard_empty(self) -> None:
        """At shutdown, after the last checkpoint: segments that never got a record."""
        with self._lock:
            for remaining in [self.journal, *self.closed]:
                if remaining is not None and remaining.size == 0:
                    remaining.discard()
