"""Maildir delivery: tmp → fsync → link into new/, the one-writer-safe Maildir way.

The file name is derived from the queue id and the delivery, so a retry
after a crash finds the copy already delivered instead of writing a second.
Quarantined mail goes to the ``.Junk`` folder (Maildir++).
"""

from __future__ import annotations

import os
import socket
import zlib
from pathlib import Path

from sesmail_gateway.errors import PermanentFailure
from sesmail_gateway.fsutil import PendingSyncs, ensure_dir, link_or_copy
from sesmail_gateway.message import Delivery, QueueItem, StoredMessage

JUNK = ".Junk"


def ensure_maildir(path: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        ensure_dir(path / sub, 0o700)
    return path


class MaildirDeliverer:
    """Delivers into Maildirs; with ``syncs`` the new files are fsynced by the spool's next checkpoint.

    Without it each delivery is fsynced (file and folder) before it returns.
    """

    def __init__(self, data_dir: Path, syncs: PendingSyncs | None = None) -> None:
        self.data_dir = data_dir
        self.syncs = syncs
        self._prepared: dict[Path, tuple[Path, Path]] = {}  # Maildirs known to exist -> their new/ and tmp/
        self._folders: dict[tuple[str, bool], Path] = {}  # (target, quarantine) -> folder: few, and asked per message
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")

    def folder_for(self, item: QueueItem, delivery: Delivery) -> Path:
        key = (delivery.target, item.quarantine)
        folder = self._folders.get(key)
        if folder is None:
            target = Path(delivery.target).expanduser()
            if not delivery.target or ".." in target.parts:
                raise PermanentFailure(f"bad Maildir target {delivery.target!r}")
            root = target if target.is_absolute() else self.data_dir / target
            folder = self._folders[key] = root / JUNK if item.quarantine else root
        return folder

    def deliver(self, item: QueueItem, delivery: Delivery, message: StoredMessage) -> None:
        folder = self.folder_for(item, delivery)
        name = f"{int(item.created)}.{item.id}_{_slug(delivery.key)}.{self.host}"
        if delivery.attempts > 0 and self._in_cur(folder, name):
            return
        # A spool or archive file is complete and never changes, so it can appear in new/ at once
        # by a hard link; bytes from memory are written in tmp/ and renamed into new/ (the Maildir way).
        # An existing file of that name is this message from an attempt a crash cut short.
        new, tmp = self._prepare(folder)
        target = new / name
        source = message.path if message.path is not None else message.read()
        try:
            linked = link_or_copy(source, target, sync=self.syncs is None, staging=tmp)
        except FileNotFoundError:  # the Maildir was removed since we made it: make it again
            self._prepared.pop(folder, None)
            new, tmp = self._prepare(folder)
            linked = link_or_copy(source, target, sync=self.syncs is None, staging=tmp)
        if self.syncs is not None:
            if linked and isinstance(source, Path):
                self.syncs.link(target, source)  # the archive file's own fsync, still to come, covers it
            else:
                self.syncs.file(target)
            self.syncs.folder(new)

    def _prepare(self, folder: Path) -> tuple[Path, Path]:
        """The Maildir's ``new`` and ``tmp`` folders, made if they are missing."""
        subfolders = self._prepared.get(folder)
        if subfolders is None:
            ensure_maildir(folder)
            subfolders = self._prepared[folder] = (folder / "new", folder / "tmp")
        return subfolders

    @staticmethod
    def _in_cur(folder: Path, name: str) -> bool:
        """A mail reader moves messages to cur/ and appends ":2,FLAGS"; only a retry needs the scan."""
        try:
            return any(entry.name.split(":", 1)[0] == name for entry in os.scandir(folder / "cur"))
        except FileNotFoundError:
            return False


def _slug(key: str) -> str:
    """A short name for the delivery that is the same in every process and run."""
    return f"{zlib.crc32(key.encode('utf-8', 'surrogateescape')):08x}"
