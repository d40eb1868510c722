"""The one OS seam for durable files: write, fsync, rename, fsync the folder.

The durability model is POSIX's and nothing more: a file's data is durable
once the file is fsynced (or fdatasynced); a name in a folder (created,
renamed, linked, removed) is durable once that folder is fsynced. A rename
between two folders is durable when both are. ``syncfs``/``sync`` are never
used: they flush other processes' data too, report writeback errors only on
recent kernels, and flush nothing at all on some network and FUSE
filesystems while still returning success.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path


def fsync_dir(path: Path, *, missing_ok: bool = False) -> None:
    """Make a folder's entries (creations, renames, removals) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, *chunks: bytes, sync: bool = True, mode: int = 0o640, exclusive: bool = False) -> None:
    """Create ``path`` holding the chunks in order; fsync it unless the caller syncs in bulk.

    ``exclusive``: FileExistsError if ``path`` exists, instead of overwriting it.
    """
    flags = os.O_EXCL if exclusive else os.O_TRUNC
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags | os.O_CLOEXEC, mode)
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


def link_or_copy(src: Path | bytes, dst: Path, *, sync: bool, staging: Path | None = None) -> bool:
    """Give ``dst`` the contents of ``src`` (a file, or the bytes themselves): a hard link where possible.

    True when ``dst`` is a hard link to ``src`` (one file with two names),
    False when it is a new file.

    Bytes, and files that cannot be linked, are written under a temporary
    name in ``staging`` (default: beside ``dst``) and renamed into place, so
    ``dst`` never shows a partial file. An existing ``dst`` that is ``src``
    itself (a retry in the same life) is left as it is. Any other existing
    ``dst`` is replaced atomically: after a power cut its name may be
    durable while its data never was (an empty file), so it proves nothing
    about an earlier attempt.
    """
    if isinstance(src, Path):
        try:
            os.link(src, dst)
        except FileExistsError:
            if os.path.samefile(src, dst):
                return True
        except OSError:  # another filesystem, or links not allowed: copy
            src = src.read_bytes()
        else:
            if sync:
                fsync_dir(dst.parent)
            return True
    staged = (staging or dst.parent) / f".{dst.name}.{os.getpid()}.new"
    linked = False
    if isinstance(src, Path):
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        try:
            os.link(src, staged)
            linked = True
        except OSError:
            write_file(staged, src.read_bytes(), mode=0o600, sync=sync)
    else:
        write_file(staged, src, mode=0o600, sync=sync)
    os.replace(staged, dst)
    if sync:
        fsync_dir(dst.parent)
    return linked


def ensure_dir(path: Path, mode: int = 0o750) -> Path:
    """Create ``path`` and any missing parents, each named durably (its parent fsynced)."""
    if path.is_dir():
        return path
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=mode)
        fsync_dir(folder.parent)
    return path


class PendingSyncs:
    """Files and folders written without fsync, to be made durable together later.

    Writers (the folder archive, Maildir delivery) note what they created;
    the spool's checkpoint calls ``flush`` before it deletes the journal
    that still holds those messages. Only ``fsync`` of files and of folders
    counts as durable (POSIX); ``syncfs``/``sync`` are never relied on.
    A failed fsync is sticky: the kernel may have dropped the pages it
    could not write, so a later fsync that succeeds proves nothing. Once
    ``failed`` is set, ``flush`` raises every time and the caller keeps its
    journals for the next start-up to replay.
    """

    def __init__(self) -> None:
        self._files: set[Path] = set()
        self._folders: set[Path] = set()
        self._lock = threading.Lock()
        self.failed: OSError | None = None

    def file(self, path: Path) -> None:
        with self._lock:
            self._files.add(path)

    def link(self, path: Path, source: Path) -> None:
        """``path`` was just made a hard link to ``source``: it needs an fsync only if ``source`` has none
        coming. The one coming, being later than the link, makes the shared file durable, its link
        count included; the new name is durable once its folder is fsynced (the caller notes that)."""
        with self._lock:
            if source not in self._files:
                self._files.add(path)

    def folder(self, path: Path) -> None:
        with self._lock:
            self._folders.add(path)

    def flush(self, *, also_files: Iterable[Path] = (), also_folders: Iterable[Path] = ()) -> None:
        """fsync every noted file, then every noted folder (a file gone meanwhile was moved or deleted)."""
        with self._lock:
            files, self._files = self._files, set()
            folders, self._folders = self._folders, set()
        files.update(also_files)
        folders.update(also_folders)
        if self.failed is not None:
            raise OSError(self.failed.errno, f"an earlier fsync failed: {self.failed.strerror}")
        try:
            for path in files:
                fsync_file(path)
            for path in folders:
                fsync_dir(path, missing_ok=True)
        except OSError as exc:
            self.failed = exc
            raise


def fsync_file(path: Path) -> None:
    """fsync one file's data and metadata; a file that no longer exists is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
