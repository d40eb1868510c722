"""The durable queue: one folder per message, one folder per state.

    spool/tmp/<id>/            being written; never acknowledged
    spool/incoming/<id>/       accepted (250 sent), waiting for the runner
    spool/active/<id>/         claimed by the runner
    spool/deferred|held|dead|rejected/<id>/
    spool/corrupt/<id>/        unreadable metadata, kept for a person

Each message folder holds ``message.eml`` (our headers prepended to the
bytes received) and ``meta.json`` (the QueueItem). A message folder moves
between states by one rename, so its two files always travel together.

``enqueue`` returns only when the message is durable: files written, the
filesystem flushed, the folder renamed into its state and that state's
folder fsynced. Concurrent enqueues share one flush (group commit).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sesmail_gateway.fsutil import FilesystemSync, atomic_write, durable_rename, ensure_dir, fsync_dir, write_file
from sesmail_gateway.message import ACTIVE, INCOMING, STATES, QueueItem

log = logging.getLogger(__name__)

MESSAGE = "message.eml"
META = "meta.json"
TMP = "tmp"
CORRUPT = "corrupt"


class SpoolError(Exception):
    """A queue operation that cannot be done (unknown id, wrong state)."""


@dataclass
class Recovery:
    resumed: int = 0
    discarded_tmp: int = 0
    corrupt: int = 0


_counter = itertools.count()


def new_queue_id() -> str:
    """Unique across processes and sortable by time: microseconds, pid, counter (hex)."""
    micros = time.time_ns() // 1000
    return f"{micros:013X}{os.getpid() & 0xFFFFF:05X}{next(_counter) & 0xFFFF:04X}"


def _encode(item: QueueItem) -> bytes:
    return json.dumps(item.to_dict(), separators=(",", ":"), sort_keys=True).encode()


Rename = tuple[Path, Path] | None


class _GroupCommit:
    """Batches durable commits: whoever arrives while a flush runs joins the next one.

    A job is a rename to make after the flush, or None for "just flush".
    """

    def __init__(self, flush: Callable[[list[Rename]], list[BaseException | None]]) -> None:
        self._flush = flush
        self._pending: list[tuple[Rename, asyncio.Future[None]]] = []
        self._running: asyncio.Task[None] | None = None

    async def commit(self, job: Rename) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._drain())
        await future

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(self._flush, [job for job, _ in batch])
            except BaseException as exc:  # the whole flush failed: every waiter hears it
                results = [exc] * len(batch)
            for (_, future), error in zip(batch, results, strict=True):
                if future.done():
                    continue
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)


class Spool:
    def __init__(self, root: Path, *, on_commit: Callable[[float, int], None] | None = None) -> None:
        self.root = root
        for name in (TMP, CORRUPT, *STATES):
            ensure_dir(root / name)
        self.fs = FilesystemSync(root)
        self._on_commit = on_commit
        self._group = _GroupCommit(self._flush)

    # -- paths -------------------------------------------------------------

    def folder(self, item: QueueItem) -> Path:
        return self.root / item.state / item.id

    def message_path(self, item: QueueItem) -> Path:
        return self.folder(item) / MESSAGE

    def read_message(self, item: QueueItem) -> bytes:
        return self.message_path(item).read_bytes()

    # -- acceptance --------------------------------------------------------

    async def enqueue(self, item: QueueItem, *chunks: bytes) -> None:
        """Store the message durably in ``item.state``; raises OSError on any failure."""
        tmp = self.root / TMP / item.id
        await asyncio.to_thread(self._write_tmp, tmp, item, chunks)
        try:
            await self._group.commit((tmp, self.root / item.state / item.id))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    async def sync(self) -> None:
        """Make every file written so far (spool, archive, Maildir) durable, sharing one flush."""
        if self.fs.available:
            await self._group.commit(None)

    @property
    def sync_each(self) -> bool:
        """True where writers must fsync each file themselves (no group flush here)."""
        return not self.fs.available

    def _write_tmp(self, tmp: Path, item: QueueItem, chunks: tuple[bytes, ...]) -> None:
        sync_each = self.sync_each
        tmp.mkdir(mode=0o750)
        write_file(tmp / MESSAGE, *chunks, sync=sync_each)
        write_file(tmp / META, _encode(item), sync=sync_each)
        if sync_each:
            fsync_dir(tmp)

    def _flush(self, jobs: list[Rename]) -> list[BaseException | None]:
        started = time.perf_counter()
        if self.fs.available:
            self.fs.sync()
        results: list[BaseException | None] = []
        targets: set[Path] = set()
        for job in jobs:
            if job is None:
                results.append(None)
                continue
            src, dst = job
            try:
                os.rename(src, dst)
                targets.add(dst.parent)
                results.append(None)
            except OSError as exc:
                results.append(exc)
        for folder in targets:
            fsync_dir(folder)
        renames = sum(job is not None for job in jobs)
        if self._on_commit and renames:
            self._on_commit(time.perf_counter() - started, renames)
        return results

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

    def items(self, state: str) -> Iterator[QueueItem]:
        for queue_id in self.ids(state):
            try:
                yield self.load(state, queue_id)
            except SpoolError as exc:
                log.warning("%s", exc)

    def counts(self) -> dict[str, int]:
        return {state: len(self.ids(state)) for state in STATES}

    # -- changes -----------------------------------------------------------

    def save(self, item: QueueItem) -> None:
        """Persist the item's metadata in its current folder (atomic, durable)."""
        atomic_write(self.folder(item) / META, _encode(item))

    def move(self, item: QueueItem, state: str) -> None:
        """Move the message folder to ``state``; SpoolError if someone moved it first."""
        if state == item.state:
            return
        src, dst = self.folder(item), self.root / state / item.id
        try:
            durable_rename(src, dst)
        except FileNotFoundError:
            raise SpoolError(f"message {item.id} is no longer in {item.state}") from None
        item.state = state

    def claim(self, state: str, queue_id: str) -> QueueItem:
        """Take a message for delivery by renaming it into ``active``."""
        src, dst = self.root / state / queue_id, self.root / ACTIVE / queue_id
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            raise SpoolError(f"message {queue_id} is no longer in {state}") from None
        return self.load(ACTIVE, queue_id)

    def remove(self, item: QueueItem) -> None:
        """Delete a finished (or operator-deleted) message."""
        folder = self.folder(item)
        gone = folder.with_name(f".{item.id}.removing")
        os.rename(folder, gone)
        shutil.rmtree(gone)
        fsync_dir(folder.parent)

    def _set_aside(self, folder: Path, why: str) -> None:
        target = self.root / CORRUPT / folder.name
        try:
            os.rename(folder, target)
            log.error("spool: %s set aside in %s: %s", folder.name, target, why)
        except OSError as exc:
            log.error("spool: cannot set aside %s (%s): %s", folder, why, exc)

    # -- start-up ----------------------------------------------------------

    def recover(self) -> Recovery:
        """Resume what a crash interrupted: active → incoming; drop unacknowledged tmp writes."""
        report = Recovery()
        for entry in os.scandir(self.root / TMP):
            shutil.rmtree(entry.path, ignore_errors=True)
            report.discarded_tmp += 1
        for state in STATES:
            for entry in os.scandir(self.root / state):
                if entry.name.startswith(".") and entry.name.endswith(".removing"):
                    shutil.rmtree(entry.path, ignore_errors=True)
                elif not (Path(entry.path) / META).exists() or not (Path(entry.path) / MESSAGE).exists():
                    self._set_aside(Path(entry.path), "message or metadata file missing")
                    report.corrupt += 1
        for queue_id in self.ids(ACTIVE):
            os.rename(self.root / ACTIVE / queue_id, self.root / INCOMING / queue_id)
            report.resumed += 1
        fsync_dir(self.root / INCOMING)
        fsync_dir(self.root / ACTIVE)
        return report
