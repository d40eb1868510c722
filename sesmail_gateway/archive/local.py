"""Folder archive: ``<root>/<YYYY-MM-DD>/<queue-id>.eml``, written durably."""

from __future__ import annotations

import time
from pathlib import Path

from sesmail_gateway.fsutil import atomic_write, ensure_dir
from sesmail_gateway.message import QueueItem


class FolderArchiver:
    def __init__(self, root: Path) -> None:
        self.root = root

    def archive(self, item: QueueItem, message: bytes) -> str:
        day = time.strftime("%Y-%m-%d", time.gmtime(item.created))
        folder = ensure_dir(self.root / day)
        path = folder / f"{item.id}.eml"
        atomic_write(path, message)
        return str(path)
