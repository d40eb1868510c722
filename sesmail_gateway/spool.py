"""The durable queue: journal segments first, one folder per message only where it must outlive them.

    spool/journal/*.wal        acceptance journals, one segment per SMTP process and second
    spool/tmp/<id>/            a folder being written; never counted
    spool/incoming/<id>/       waiting for the runner (written when a message must outlive its segment)
    spool/active/<id>/         left by versions that claimed by renaming; resumed at start-up
    spool/deferred|held|dead|rejected/<id>/
    spool/done/<id>/           retired from a folder; kept until no journal can bring it back
    spool/corrupt/<id>/        unreadable, kept for a person
    spool/delivered/*.log      remote deliveries made (delivered.py)

The durability model is POSIX's and nothing more (fsutil.py): a file's
data is durable once it is fsynced or fdatasynced, a name in a folder once
that folder is fsynced; ``syncfs`` and ``sync`` are never used.

``enqueue`` returns (and the session answers 250) only when the message is
durable: appended to its process's journal segment and fdatasynced, the
segment's name made durable when it was created (journal.py). One append
and one fdatasync serve every session that arrived meanwhile (group commit),
and no file is created on that path.

With a runner attached (``on_accepted``), that is all acceptance writes:
the runner gets the record (the bytes, or where to read them) and delivers
it without a spool folder (runner.py, segments.py). The Maildir and archive
copies it writes are fsynced by the runner's next checkpoint; only then is
the record settled. A message that must outlive its segment (deferred,
held, dead, refused at DATA, or not tried within a few seconds) gets a
folder first, written with its files and folder fsynced in tmp/ and renamed
into its state folder, which is fsynced before tmp/. A segment is deleted
only when its writer has sealed it and every record in it is settled; one
whose fdatasync failed never is. Start-up, and the death of an SMTP worker,
adopt the segments no process holds and deliver their records again:
Maildir and archive copies by the same names, remote deliveries skipped
when the delivered log has them.

Without a runner (a spool used on its own), the message folder is written
in the background and made durable by a checkpoint every second before the
journal is deleted; ``recover`` replays journals into folders.

A message leaves a state by being linked into its new state first (files
fsynced, folder and its state folder fsynced) and removed from the old one
after, so at every moment one durable copy exists; a crash in between
leaves two, and recovery keeps the newer. A failed fsync is sticky: this
process deletes no journal and retires nothing afterwards, and the next
start-up replays.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sesmail_gateway import journal
from sesmail_gateway.fsutil import (
    PendingSyncs,
    atomic_write,
    ensure_dir,
    fsync_dir,
    fsync_file,
    write_file,
)
from sesmail_gateway.groupcommit import GroupCommit
from sesmail_gateway.message import ACTIVE, INCOMING, REJECTED, STATES, QueueItem
from sesmail_gateway.segments import Segments

log = logging.getLogger(__name__)

MESSAGE = "message.eml"
META = "meta.json"
TMP = "tmp"
DONE = "done"
CORRUPT = "corrupt"
JOURNAL = "journal"
CLOCK_MARGIN_NS = 1_000_000_000


class SpoolError(Exception):
    """A queue operation that cannot be done (unknown id, wrong state)."""


@dataclass
class Recovery:
    resumed: int = 0
    discarded_tmp: int = 0
    corrupt: int = 0
    replayed: int = 0


@dataclass
class _Accept:
    item: QueueItem
    meta: bytes
    chunks: tuple[bytes, ...]
    journal: journal.Journal | None = None
    offset: int = 0  # of its record in the journal


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


# Accepted messages up to this size reach the runner as bytes; larger ones are read back from the journal.
IN_MEMORY_MAX = 64 * 1024

# Messages journaled but not yet written to their folders are held in memory;
# past this many, new acceptances wait (backpressure instead of unbounded memory).
MAX_UNWRITTEN = 512


_counter = itertools.count()


def new_queue_id() -> str:
    """Unique across processes and sortable by time: microseconds, pid, counter (hex)."""
    micros = time.time_ns() // 1000
    return f"{micros:013X}{os.getpid() & 0xFFFFF:05X}{next(_counter) & 0xFFFF:04X}"


async def run_checkpoints(spool: Spool, interval: float = 1.0) -> None:
    """Checkpoint every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(spool.checkpoint)
        except OSError as exc:
            # Journals stay until a checkpoint succeeds: nothing is lost, disk use grows.
            log.error("spool: checkpoint failed: %s", exc)


def _encode(item: QueueItem) -> bytes:
    return json.dumps(item.to_dict(), separators=(",", ":"), sort_keys=True).encode()


class Spool:
    def __init__(
        self,
        root: Path,
        *,
        on_commit: Callable[[float, int], None] | None = None,
        on_ready: Callable[[str], None] | None = None,
        on_accepted: Callable[[Accepted], None] | None = None,
        on_sealed: Callable[[str, bool, int], None] | None = None,
        sweeper: bool = False,
        create: bool = True,
    ) -> None:
        """``create=False`` opens the spool for reading only: nothing is created on disk.

        With ``on_accepted`` (a runner takes the messages) no folder is
        written at acceptance: the runner delivers from the journal record,
        and ``on_sealed`` hears of each journal segment this process will
        append to no more. Without it every message is written to its folder.
        """
        self.root = root
        for name in (TMP, DONE, CORRUPT, JOURNAL, *STATES) if create else ():
            ensure_dir(root / name)
        self.syncs = PendingSyncs()  # what the runner's writers leave for the checkpoint to fsync
        self._on_commit = on_commit
        self.on_ready = on_ready  # told each queue id whose folder is written (the runner's doorbell)
        self.on_accepted = on_accepted
        self.on_sealed = on_sealed
        self.segments = Segments(root / JOURNAL)  # the runner's view of every process's journal segments
        self.sweeper = sweeper  # one process (the runner's) clears done/; SMTP workers leave it alone
        self._accepts: GroupCommit[_Accept] = GroupCommit(self._commit_accepts)
        self._writes: GroupCommit[_Accept] = GroupCommit(self._write_folders)
        self._room: asyncio.Semaphore | None = None
        self._writing: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()
        self._journal: journal.Journal | None = None
        self._closed: list[journal.Journal] = []
        self._finished: list[QueueItem] = []
        self._finishing: set[str] = set()  # finished, not yet tombstoned: not to be delivered again
        self._unsynced: dict[str, Path] = {}  # folders written without fsync, by queue id

    # -- paths -------------------------------------------------------------

    def folder(self, item: QueueItem) -> Path:
        return self.root / item.state / item.id

    def message_path(self, item: QueueItem) -> Path:
        return self.folder(item) / MESSAGE

    # -- acceptance --------------------------------------------------------

    async def enqueue(self, item: QueueItem, *chunks: bytes) -> None:
        """Store the message durably in ``item.state``; raises OSError on any failure.

        When this returns the message survives a crash; its folder may appear
        a moment later (``on_ready`` says when).
        """
        job = _Accept(item, _encode(item), chunks)
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
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)

    def _commit_accepts(self, jobs: list[_Accept]) -> list[BaseException | None]:
        started = time.perf_counter()
        buffers = [buf for job in jobs for buf in journal.encode(job.meta, job.chunks)]
        with self._lock:
            if self._journal is None:
                self._journal = journal.Journal(self.root / JOURNAL)
            try:
                offset = self._journal.append(buffers)
            except OSError as exc:
                # Every session of the batch hears 451; later batches go to a fresh file,
                # so no torn record can stand in front of an acknowledged one.
                if self._journal.broken:  # the fdatasync itself failed: trust no later flush
                    self.syncs.failed = self.syncs.failed or exc
                    log.critical("spool: journal fdatasync failed (%s); journals are kept for the next "
                                 "start-up from now on", exc)
                self._retire_current()
                raise
            self._journal.pending += len(jobs)
            self._journal.records += len(jobs)
            for job in jobs:
                job.journal = self._journal
                job.offset = offset
                offset += journal.record_size(job.meta, sum(len(c) for c in job.chunks))
        if self._on_commit:
            self._on_commit(time.perf_counter() - started, len(jobs))
        return [None] * len(jobs)

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
            folder = self.folder(job.item)
            try:
                self._write_tmp(tmp, job.meta, job.chunks, sync=False)
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

    @staticmethod
    def _write_tmp(tmp: Path, meta: bytes, chunks: tuple[bytes, ...], *, sync: bool) -> None:
        tmp.mkdir(mode=0o750)
        write_file(tmp / MESSAGE, *chunks, sync=sync, mode=0o600)
        write_file(tmp / META, meta, sync=sync)
        if sync:
            fsync_dir(tmp)

    def materialize(self, item: QueueItem, data: bytes) -> None:
        """Give a message the runner holds from its journal record a durable folder in ``item.state``. Blocks.

        Files and folder are fsynced in tmp/, then renamed into the state
        folder, which is fsynced before tmp/ (a rename is durable once both
        folders are; the destination first, so a cut in between leaves it
        under both names, never under none).
        """
        tmp = self.root / TMP / item.id
        shutil.rmtree(tmp, ignore_errors=True)
        folder = self.folder(item)
        if folder.exists():
            shutil.rmtree(folder)  # a torn copy from before a crash: the record is whole
        self._write_tmp(tmp, _encode(item), (data,), sync=True)
        os.rename(tmp, folder)
        fsync_dir(folder.parent)
        fsync_dir(self.root / TMP)

    def adopt(self, paths: list[Path]) -> Iterator[Accepted]:
        """The records of orphaned journal segments that still need the runner. Blocks.

        At start-up every segment is orphaned; later, those of an SMTP worker
        that died. A record already seen, retired (a tombstone in done/) or
        whole in a folder needs nothing; a folder a crash tore is removed and
        the record delivered again. Each segment adopted counts as sealed.
        """
        for path in paths:
            name = path.name
            if not journal.is_orphaned(path):
                continue
            records = 0
            for offset, record in journal.read_records_with_offsets(path):
                records += 1
                try:
                    item = QueueItem.from_dict(json.loads(record.meta))
                except (ValueError, TypeError):
                    log.error("spool: journal record with unreadable metadata skipped in %s", name)
                    continue
                if self.segments.seen(name, item.id):
                    continue
                if self._kept_copy(item, record.message) is not None:
                    self.segments.known(name, item.id)
                elif self.segments.accepted(name, item.id):
                    log.warning("spool: %s restored from the journal", item.id)
                    yield Accepted(item, name, offset)
            self.segments.sealed(name, broken=False, records=records)

    def _kept_copy(self, item: QueueItem, message: bytes) -> Path | None:
        """Where a journaled message lives on: its tombstone in done/, or a whole folder. None: nowhere.

        A folder a crash tore is removed (the journal record has the whole message).
        """
        retired = self.root / DONE / item.id
        if retired.exists():
            return retired
        for state in STATES:
            folder = self.root / state / item.id
            if folder.exists():
                if self._intact(folder, message):
                    return folder
                shutil.rmtree(folder)
        return None

    def orphaned_segments(self, pid: int | None = None, *, idle_for: float = 0.0) -> list[Path]:
        """Journal segments no live process holds (of process ``pid`` only, when given).

        ``idle_for`` > 0: only segments the runner does not track that were
        last written that many seconds ago (a worker of an earlier daemon
        that finished its sessions after this one started).
        """
        found = []
        for path in journal.journal_files(self.root / JOURNAL):
            if pid is not None and journal.owner_pid(path) != pid:
                continue
            if idle_for:
                try:
                    if self.segments.tracked(path.name) or time.time() - path.stat().st_mtime < idle_for:
                        continue
                except FileNotFoundError:
                    continue
            if journal.is_orphaned(path):
                found.append(path)
        return found

    # -- durability of what the runner writes --------------------------------

    def sync_now(self) -> None:
        """Make every folder written so far and everything the runner wrote durable. Blocks.

        The runner calls it only before saving a partial result (rare); the
        common case, a delivered message, waits for the next checkpoint.
        """
        with self._lock:
            unsynced = dict(self._unsynced)
        files, folders = self._folder_syncs(unsynced, set())
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

    def finish(self, item: QueueItem) -> None:
        """The message is delivered: forget it once what was written for it is durable."""
        with self._lock:
            self._finished.append(item)
            self._finishing.add(item.id)

    def finishing(self, queue_id: str) -> bool:
        """Delivered, and waiting for the checkpoint to retire it: not to be delivered again."""
        return queue_id in self._finishing

    def _retire_current(self) -> None:
        """The current journal takes no more records (under the lock): sealed for the runner, or closed."""
        assert self._journal is not None
        if self.on_sealed is not None:
            self._journal.seal()
            self.on_sealed(self._journal.path.name, self._journal.broken, self._journal.records)
        else:
            self._closed.append(self._journal)
        self._journal = None

    def checkpoint(self) -> None:
        """fsync what the journals must outlive; then tombstone finished messages and retire journals. Blocks."""
        with self._lock:
            finished, self._finished = self._finished, []
            if self._journal is not None and self._journal.size:
                self._retire_current()
            retiring = [j for j in self._closed if j.pending == 0]
            unsynced, self._unsynced = self._unsynced, {}
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
                    self._unsynced.update(unsynced)
                raise
            if finished:
                sources = {self.folder(item).parent for item in finished}
                for item in finished:
                    self._tombstone(item)
                fsync_dir(self.root / DONE)  # so a replay finds the tombstones ...
                for folder in sources:
                    fsync_dir(folder)  # ... and a restart does not deliver them again
                with self._lock:
                    self._finishing.difference_update(done)
            for old in retiring:
                old.discard()
            if retiring:
                fsync_dir(self.root / JOURNAL)
            with self._lock:
                self._closed = [j for j in self._closed if j not in retiring]
        if self.sweeper:
            self._sweep_done()

    async def close(self, timeout: float = 30.0) -> None:
        """At shutdown: finish writing folders (what cannot be written stays in the journal), then a last checkpoint."""
        if self._writing:
            _, stuck = await asyncio.wait(self._writing, timeout=timeout)
            for task in stuck:
                task.cancel()  # its journal is not retired: the next start-up restores the message
        try:
            await asyncio.to_thread(self.checkpoint)
        except OSError as exc:
            log.error("spool: last checkpoint failed (%s); the next start-up replays the journals", exc)
        with self._lock:
            for remaining in [self._journal, *self._closed]:
                if remaining is not None and remaining.size == 0:
                    remaining.discard()

    def _tombstone(self, item: QueueItem) -> None:
        """Move a finished or deleted message to done/, where a journal replay will find it."""
        target = self.root / DONE / item.id
        try:
            os.rename(self.folder(item), target)  # sets the folder's ctime: when it was retired
        except FileNotFoundError:
            log.warning("spool: %s vanished before it could be retired", item.id)

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

    def _sweep_done(self) -> None:
        """Delete done/ entries older than every journal that still holds records."""
        oldest = self.oldest_journal_ns()
        # ctime comes from the kernel's coarse clock (a few ms behind time_ns): keep a margin.
        horizon = (time.time_ns() if oldest is None else oldest) - CLOCK_MARGIN_NS
        for entry in os.scandir(self.root / DONE):
            try:
                retired_at = entry.stat().st_ctime_ns
            except FileNotFoundError:
                continue
            if retired_at < horizon:
                shutil.rmtree(entry.path, ignore_errors=True)

    # -- reading -----------------------------------------------------------

    def load(self, state: str, queue_id: str) -> QueueItem:
        folder = self.root / state / queue_id
        try:
            data = json.loads((folder / META).read_bytes())
            item = QueueItem.from_dict(data)
        except FileNotFoundError:
            raise SpoolError(f"no message {queue_id} in {state}") from None
        except (ValueError, TypeError) as exc:
            self._set_aside(folder, f"unreadable metadata: {exc}")
            raise SpoolError(f"message {queue_id} has unreadable metadata; moved to {CORRUPT}/") from None
        item.state = state
        return item

    def find(self, queue_id: str) -> QueueItem:
        """The item with this id in whatever state it is."""
        if not queue_id or "/" in queue_id or queue_id.startswith("."):
            raise SpoolError(f"not a queue id: {queue_id!r}")
        for state in STATES:
            if (self.root / state / queue_id / META).exists():
                return self.load(state, queue_id)
        raise SpoolError(f"no message with id {queue_id}")

    def ids(self, state: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(self.root / state) if e.is_dir() and not e.name.startswith("."))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise SpoolError(f"cannot read {self.root / state}: {exc.strerror}") from None

    def items(self, state: str) -> Iterator[QueueItem]:
        for queue_id in self.ids(state):
            try:
                yield self.load(state, queue_id)
            except SpoolError as exc:
                log.warning("%s", exc)

    def counts(self) -> dict[str, int]:
        """Messages per state; delivered ones waiting for the checkpoint to retire them do not count."""
        with self._lock:
            finishing = set(self._finishing)
        counts = {state: len(set(self.ids(state)) - finishing) for state in STATES}
        counts[INCOMING] += self.segments.waiting()  # accepted, held by the runner without a folder
        return counts

    # -- changes -----------------------------------------------------------

    def save(self, item: QueueItem) -> None:
        """Persist the item's metadata in its current folder (atomic, durable)."""
        atomic_write(self.folder(item) / META, _encode(item))

    def move(self, item: QueueItem, state: str) -> None:
        """Move the message to ``state`` durably; SpoolError if someone moved it first.

        The new folder (hard links to the same two files) is durable before
        the old one is removed: a crash in between leaves two copies, never
        none, and ``recover`` keeps the newer.
        """
        if state == item.state:
            return
        src, dst = self.folder(item), self.root / state / item.id
        staging = self.root / state / f".{item.id}.moving"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o750)
        try:
            os.link(src / MESSAGE, staging / MESSAGE)
        except FileNotFoundError:
            shutil.rmtree(staging, ignore_errors=True)
            raise SpoolError(f"message {item.id} is no longer in {item.state}") from None
        fsync_file(staging / MESSAGE)
        previous = item.state
        item.state = state  # the new copy's record names its state, and is newer than the old one's
        try:
            write_file(staging / META, _encode(item))
        except BaseException:
            item.state = previous
            raise
        fsync_dir(staging)
        if dst.exists():
            shutil.rmtree(dst)  # a copy a crash left behind; the one moving now is newer
        os.rename(staging, dst)
        fsync_dir(dst.parent)
        self._discard(src)
        with self._lock:
            self._unsynced.pop(item.id, None)

    def claim(self, state: str, queue_id: str) -> QueueItem:
        """Read a message for delivery where it lies (the runner alone delivers, one attempt at a time)."""
        if self.finishing(queue_id):
            raise SpoolError(f"message {queue_id} is already delivered")
        item = self.load(state, queue_id)
        if not (self.root / state / queue_id / MESSAGE).exists():
            self._set_aside(self.root / state / queue_id, "message file missing")
            raise SpoolError(f"message {queue_id} has no message file; moved to {CORRUPT}/")
        return item

    def remove(self, item: QueueItem) -> None:
        """Delete a message (operator delete): a tombstone keeps any journal from bringing it back."""
        self._tombstone(item)
        fsync_dir(self.root / DONE)
        fsync_dir(self.folder(item).parent)

    def _discard(self, folder: Path) -> None:
        """Remove a message folder for good (its content lives on elsewhere) and make that durable."""
        gone = folder.with_name(f".{folder.name}.removing")
        try:
            os.rename(folder, gone)
        except FileNotFoundError:
            return
        fsync_dir(folder.parent)
        shutil.rmtree(gone, ignore_errors=True)

    def _set_aside(self, folder: Path, why: str) -> None:
        target = self.root / CORRUPT / folder.name
        try:
            os.rename(folder, target)
            log.error("spool: %s set aside in %s: %s", folder.name, target, why)
        except OSError as exc:
            log.error("spool: cannot set aside %s (%s): %s", folder, why, exc)

    # -- start-up ----------------------------------------------------------

    def recover(self, *, replay: bool = True) -> Recovery:
        """At start-up, before any session: replay journals, resume ``active``, drop unacknowledged writes.

        ``replay=False`` leaves the journals to the runner (``adopt``), which
        delivers their records without writing folders first.
        """
        report = Recovery()
        for entry in os.scandir(self.root / TMP):
            shutil.rmtree(entry.path, ignore_errors=True)
            report.discarded_tmp += 1
        self._drop_leftovers()
        if replay:
            report.replayed = self.replay_orphaned_journals()
        # Folders are not opened here (start-up stays fast with a large queue): one that is damaged
        # is set aside when it is first read (load, claim).
        for queue_id in self.ids(ACTIVE):  # left by versions that claimed by renaming
            os.rename(self.root / ACTIVE / queue_id, self.root / INCOMING / queue_id)
            report.resumed += 1
        fsync_dir(self.root / INCOMING)
        fsync_dir(self.root / ACTIVE)
        return report

    def _drop_leftovers(self) -> None:
        """Half-done moves and removals; and where a crash left a message in two states, the older copy."""
        seen: dict[str, list[Path]] = {}
        for state in STATES:
            for entry in os.scandir(self.root / state):
                if entry.name.startswith("."):  # .ID.moving (never renamed into place), .ID.removing
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    seen.setdefault(entry.name, []).append(Path(entry.path))
        for queue_id, copies in seen.items():
            if len(copies) < 2:
                continue
            copies.sort(key=_meta_mtime)
            for stale in copies[:-1]:
                log.warning("spool: %s found in %s and %s after a crash; keeping %s", queue_id,
                            stale.parent.name, copies[-1].parent.name, copies[-1].parent.name)
                self._discard(stale)

    def replay_orphaned_journals(self) -> int:
        """Put back every journaled message whose folder is missing or damaged; delete those journals.

        Every message a journal holds is made durable in its folder (files,
        folder, state folder fsynced) before that journal is deleted: a
        folder that survived a process crash may exist only in the page cache.
        """
        orphans = [p for p in journal.journal_files(self.root / JOURNAL) if journal.is_orphaned(p)]
        replayed = 0
        files: list[Path] = []
        folders: set[Path] = set()
        for path in orphans:
            for record in journal.read_records(path):
                folder, restored = self._replay(record)
                replayed += restored
                if folder is not None:
                    files += (folder / MESSAGE, folder / META)
                    folders.update((folder, folder.parent))
        if orphans:
            self.syncs.flush(also_files=files, also_folders=folders)
            for path in orphans:
                path.unlink(missing_ok=True)
            fsync_dir(self.root / JOURNAL)
        return replayed

    def _replay(self, record: journal.Record) -> tuple[Path | None, int]:
        """The folder that now holds the record's message (None if it was retired), and 1 if restored."""
        try:
            item = QueueItem.from_dict(json.loads(record.meta))
        except (ValueError, TypeError):
            log.error("spool: journal record with unreadable metadata skipped")
            return None, 0
        kept = self._kept_copy(item, record.message)
        if kept is not None:
            return (None if kept.parent.name == DONE else kept), 0
        shutil.rmtree(self.root / TMP / item.id, ignore_errors=True)
        # Back to the state it was accepted in: a message refused at DATA stays refused.
        folder = self.root / (item.state if item.state in (INCOMING, REJECTED) else INCOMING) / item.id
        folder.mkdir(mode=0o750)
        write_file(folder / MESSAGE, record.message, sync=False, mode=0o600)
        write_file(folder / META, record.meta, sync=False)
        log.warning("spool: %s restored from the journal", item.id)
        return folder, 1

    @staticmethod
    def _intact(folder: Path, message: bytes) -> bool:
        try:
            json.loads((folder / META).read_bytes())
            return (folder / MESSAGE).read_bytes() == message
        except (OSError, ValueError):
            return False


def _meta_mtime(folder: Path) -> int:
    try:
        return (folder / META).stat().st_mtime_ns
    except OSError:
        return -1
