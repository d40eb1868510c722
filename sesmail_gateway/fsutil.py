"""The one OS seam for durable files: write, fsync, rename, fsync the folder."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, *chunks: bytes, sync: bool = True, mode: int = 0o640) -> None:
    """Create ``path`` holding the chunks in order; fsync it unless the caller syncs in bulk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o640) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    write_file(tmp, data, mode=mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def durable_rename(src: Path, dst: Path) -> None:
    """Rename and make both folders' entries durable."""
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def link_or_copy(src: Path, dst: Path, *, sync: bool) -> None:
    """Give ``dst`` the contents of ``src``: a hard link where possible, else a copy.

    An existing ``dst`` is left as it is (a retry after a crash).
    """
    try:
        os.link(src, dst)
    except FileExistsError:
        return
    except OSError:  # another filesystem, or links not allowed: copy
        tmp = dst.with_name(f".{dst.name}.tmp")
        write_file(tmp, src.read_bytes(), mode=0o600, sync=sync)
        os.replace(tmp, dst)
    if sync:
        fsync_dir(dst.parent)


def ensure_dir(path: Path, mode: int = 0o750) -> Path:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    return path


class FilesystemSync:
    """Flush whole filesystems at once with syncfs(2), where the OS has it.

    One syncfs makes every file written before it durable, so many messages
    written by concurrent sessions and deliveries share one flush (group
    commit). Every folder that holds such unsynced files is tracked, and
    each distinct filesystem among them is flushed. Where syncfs is missing,
    ``available`` is False and writers fsync each file themselves.
    """

    def __init__(self, *anchors: Path) -> None:
        self._anchors: dict[int, Path] = {}
        self._syncfs = None
        name = ctypes.util.find_library("c")
        if name and hasattr(os, "O_DIRECTORY"):
            libc = ctypes.CDLL(name, use_errno=True)
            self._syncfs = getattr(libc, "syncfs", None)
        for anchor in anchors:
            self.track(anchor)

    @property
    def available(self) -> bool:
        return self._syncfs is not None

    def track(self, folder: Path) -> None:
        """Include the filesystem holding ``folder`` (which must exist) in every flush."""
        self._anchors.setdefault(os.stat(folder).st_dev, folder)

    def sync(self) -> None:
        if self._syncfs is None:
            raise OSError("syncfs is not available")
        for anchor in list(self._anchors.values()):
            fd = os.open(anchor, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if self._syncfs(fd) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
