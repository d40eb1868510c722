"""Scratch folders of a benchmark run, removed together when the run ends.

A row's server writes thousands of files. Removing them before the next row
starts would make that row pay for them: ext4 without a journal (as some VM
images mount their root) skips every inode freed in the last one to five
minutes when it allocates a new one (``recently_deleted()`` in
fs/ext4/ialloc.c), so each file the next server creates costs a scan past
all of them. Measured here: the main process of the gateway spent a fifth
of the machine's CPU in that scan after the previous row's folder was
removed. Keeping every row's folder until the run ends leaves each server
paying only for the files it deletes itself (Postfix its queue files).
Runs back to back pay for each other the same way: ``keep_all()`` (the
benchmark's ``--keep-scratch``) leaves the folders for the caller to remove.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

_folders: list[Path] = []
_keep = False


def scratch_folder(prefix: str) -> Path:
    """A new temporary folder, kept until the run ends."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    _folders.append(folder)
    return folder


def keep_all() -> None:
    """Leave every scratch folder in place when the run ends (their names are printed)."""
    global _keep
    _keep = True


def remove_all() -> None:
    """Remove every scratch folder of this run (also at interpreter exit), unless they are kept."""
    if _keep:
        for folder in _folders:
            print(f"kept {folder}")
        _folders.clear()
    while _folders:
        shutil.rmtree(_folders.pop(), ignore_errors=True)


atexit.register(remove_all)
