"""Message folders: reading them, and moving a message from state to state durably.

A message leaves a state by being linked into its new state first (files
fsynced, folder and its state folder fsynced) and removed from the old one
after, so at every moment one durable copy exists; a crash in between
leaves two, and start-up keeps the newer (recovery.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from sesmail_gateway.fsutil import atomic_write, ensure_dir, fsync_dir, fsync_file, write_file
from sesmail_gateway.message import STATES, QueueItem
from sesmail_gateway.spool.layout import CORRUPT, DONE, JOURNAL, MESSAGE, META, TMP, SpoolError, encode

log = logging.getLogger(__name__)


class Folders:
    def __init__(self, root: Path, *, create: bool = True) -> None:
        """``create=False`` reads only: nothing is created on disk."""
        self.root = root
        for name in (TMP, DONE, CORRUPT, JOURNAL, *STATES) if create else ():
            ensure_dir(root / name)

    def folder(self, item: QueueItem) -> Path:
        return self.root / item.state / item.id

    def message_path(self, item: QueueItem) -> Path:
        return self.folder(item) / MESSAGE

    # -- reading -----------------------------------------------------------

    def load(self, state: str, queue_id: str) -> QueueItem:
        folder = self.root / state / queue_id
        try:
            data = json.loads((folder / META).read_bytes())
            item = QueueItem.from_dict(data)
        except FileNotFoundError:
            raise SpoolError(f"no message {queue_id} in {state}") from None
        except (ValueError, TypeError) as exc:
            self.set_aside(folder, f"unreadable metadata: {exc}")
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

    def claim(self, state: str, queue_id: str) -> QueueItem:
        """Read a message for delivery where it lies (the runner alone delivers, one attempt at a time)."""
        item = self.load(state, queue_id)
        if not (self.root / state / queue_id / MESSAGE).exists():
            self.set_aside(self.root / state / queue_id, "message file missing")
            raise SpoolError(f"message {queue_id} has no message file; moved to {CORRUPT}/")
        return item

    # -- writing -----------------------------------------------------------

    @staticmethod
    def write_tmp(tmp: Path, meta: bytes, chunks: tuple[bytes, ...], *, sync: bool) -> None:
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
        self.write_tmp(tmp, encode(item), (data,), sync=True)
        os.rename(tmp, folder)
        fsync_dir(folder.parent)
        fsync_dir(self.root / TMP)

    def save(self, item: QueueItem) -> None:
        """Persist the item's metadata in its current folder (atomic, durable)."""
        atomic_write(self.folder(item) / META, encode(item))

    def move(self, item: QueueItem, state: str) -> None:
        """Move the message to ``state`` durably; SpoolError if someone moved it first.

        The new folder (hard links to the same two files) is durable before
        the old one is removed: a crash in between leaves two copies, never
        none, and recovery keeps the newer.
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
            write_file(staging / META, encode(item))
        except BaseException:
            item.state = previous
            raise
        fsync_dir(staging)
        if dst.exists():
            shutil.rmtree(dst)  # a copy a crash left behind; the one moving now is newer
        os.rename(staging, dst)
        fsync_dir(dst.parent)
        self.discard(src)

    def tombstone(self, item: QueueItem) -> None:
        """Move a finished or deleted message to done/, where a journal replay will find it (not fsynced)."""
        target = self.root / DONE / item.id
        try:
            os.rename(self.folder(item), target)  # sets the folder's ctime: when it was retired
        except FileNotFoundError:
            log.warning("spool: %s vanished before it could be retired", item.id)

    def remove(self, item: QueueItem) -> None:
        """Delete a message (operator delete): a tombstone keeps any journal from bringing it back."""
        self.tombstone(item)
        fsync_dir(self.root / DONE)
        fsync_dir(self.folder(item).parent)

    def discard(self, folder: Path) -> None:
        """Remove a message folder for good (its content lives on elsewhere) and make that durable."""
        gone = folder.with_name(f".{folder.name}.removing")
        try:
            os.rename(folder, gone)
        except FileNotFoundError:
            return
        fsync_dir(folder.parent)
        shutil.rmtree(gone, ignore_errors=True)

    def set_aside(self, folder: Path, why: str) -> None:
        target = self.root / CORRUPT / folder.name
        try:
            os.rename(folder, target)
            log.error("spool: %s set aside in %s: %s", folder.name, target, why)
        except OSError as exc:
            log.error("spool: cannot set aside %s (%s): %s", folder, why, exc)
