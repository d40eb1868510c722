"""Folder archive: ``<root>/<YYYY-MM-DD>/<queue-id>.eml``.

With ``syncs``, files are written unsynced and fsynced by the spool's next
checkpoint, before the spool forgets the message; without, at once.
"""

from __future__ import annotations

import time
from pathlib import Path

from sesmail_gateway.fsutil import PendingSyncs, ensure_dir, fsync_dir, link_or_copy, write_file
from sesmail_gateway.message import QueueItem, StoredMessage


class FolderArchiver:
    local = True  # a copy is a file write, not a remote call: the runner may batch them

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
        if message.path is None and self.syncs is not None:
            # Bytes from a journal record: written under the final name (one rename fewer). A copy torn by
            # a crash is replaced when the journal, kept until this file is fsynced, is replayed.
            try:
                write_file(path, message.read(), sync=False, mode=0o600, exclusive=True)
            except FileExistsError:
                link_or_copy(message.read(), path, sync=False)  # from an attempt before a crash: replaced
        else:
            # A spool file never changes: the archive copy is a hard link to it.
            link_or_copy(message.path if message.path is not None else message.read(), path,
                         sync=self.syncs is None)
        if self.syncs is not None:
            self.syncs.file(path)
            self.syncs.folder(folder)
        return str(path)
