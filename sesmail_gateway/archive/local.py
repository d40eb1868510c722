"""Folder archive: ``<root>/<YYYY-MM-DD>/<queue-id>.eml``.

With a group flush (``fs``), files are written unsynced and become durable
with the runner's next shared flush, before the spool forgets the message.
"""

from __future__ import annotations

import time
from pathlib import Path

from sesmail_gateway.fsutil import FilesystemSync, ensure_dir, link_or_copy
from sesmail_gateway.message import QueueItem, StoredMessage


class FolderArchiver:
    def __init__(self, root: Path, fs: FilesystemSync | None = None) -> None:
        self.root = ensure_dir(root)
        self.fs = fs if fs is not None and fs.available else None
        if self.fs is not None:
            self.fs.track(self.root)
        self._days: set[str] = set()

    def archive(self, item: QueueItem, message: StoredMessage) -> str:
        day = time.strftime("%Y-%m-%d", time.gmtime(item.created))
        folder = self.root / day
        if day not in self._days:
            ensure_dir(folder)
            self._days.add(day)
        path = folder / f"{item.id}.eml"
        # The spool file never changes: the archive copy is a hard link to it.
        link_or_copy(message.path, path, sync=self.fs is None)
        return str(path)
