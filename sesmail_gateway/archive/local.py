"""Folder archive: ``<root>/<YYYY-MM-DD>/<queue-id>.eml``.

With ``syncs``, files are written unsynced and fsynced by the spool's next
checkpoint, before the spool forgets the message; without, at once.
"""

from __future__ import annotations

import time
from pathlib import Path

from sesmail_gateway.fsutil import PendingSyncs, ensure_dir, fsync_dir, link_or_copy
from sesmail_gateway.message import QueueItem, StoredMessage


class FolderArchiver:
    def __init__(self, root: Path, syncs: PendingSyncs | None = None) -> None:
        self.root = ensure_dir(root)
        self.syncs = syncs
        self._days: set[str] = set()

    def archive(self, item: QueueItem, message: StoredMessage) -> str:
        day = time.strftime("%Y-%m-%d", time.gmtime(item.created))
        folder = self.root / day
        if day not in self._days:
            ensure_dir(folder)
            fsync_dir(self.root)  # the day's folder is named durably before anything in it counts
            self._days.add(day)
        path = folder / f"{item.id}.eml"
        # A spool file never changes: the archive copy is a hard link to it; bytes from memory are written.
        link_or_copy(message.path if message.path is not None else message.read(), path, sync=self.syncs is None)
        if self.syncs is not None:
            self.syncs.file(path)
            self.syncs.folder(folder)
        return str(path)
