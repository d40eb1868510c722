"""A FUSE filesystem that keeps only what POSIX promises to keep, and loses the rest on command.

Every operation passes through to a backing folder (``<state>/root``), so
programs on the mount see an ordinary filesystem. Beside it the filesystem
keeps a model of what a power cut would leave, and on command ("cut the
power") it stops answering, is unmounted, and rewrites the backing folder
to that model. Mounting it again is booting after the power came back.

The model (what survives a power cut):

* **A file's data** is its content as of its last successful ``fsync`` or
  ``fdatasync`` (the two are the same here: size and data, the only
  metadata this model keeps). A file never synced has no data (it comes
  back empty, if it comes back at all). Writes and truncations since the
  last sync are undone: appended bytes are cut off, overwritten bytes get
  their synced value back.
* **A folder's entries** (names and the files or folders they point to)
  are those recorded by its last ``fsync`` of the folder itself. Creating,
  renaming, unlinking, hard-linking (``link``) and ``mkdir``/``rmdir``
  change only the live entries; each change is durable once the folder it
  changed is fsynced. Consequences:

  - a file created and fsynced in a folder that is not fsynced afterwards
    is gone after the cut, whatever its data;
  - a file whose name is durable but whose data was never fsynced comes
    back empty;
  - a rename changes two folders (or one), and each folder keeps its own
    record: the rename is whole only once both the source and the
    destination folder have been fsynced after it. Only the source fsynced:
    the removal is durable and the addition is not, so the file or folder
    is under neither name (lost, as a filesystem without a journal leaves
    it to fsck). Only the destination fsynced: a file is under both names
    (two hard links); a folder, which can have only one parent, keeps its
    old name (the rename is undone). This is the conservative reading of
    POSIX and of fsync(2) ("an explicit fsync() on a file descriptor for
    the directory is also needed"), which promise nothing about a folder
    that was not fsynced. ext4 and XFS usually do better (one journal
    transaction makes the whole rename durable), but a program that relies
    on that relies on one filesystem's habits. So a program must fsync
    the destination before the source, and expect the file under both
    names after a cut between the two;
  - a folder created by ``mkdir`` exists after the cut only if its parent
    was fsynced after the mkdir, and then holds only what its own last
    fsync recorded;
  - an unlink is undone unless the folder is fsynced after it; an unlinked
    file still named by a durable entry comes back with its synced data.

* ``sync`` and ``syncfs`` flush nothing: FUSE does not tell the filesystem
  about them (Linux sends FUSE_SYNCFS only to virtiofs), and they return
  0. That is what they are worth on FUSE and several network filesystems,
  and why a program must not rely on them.
* Not modelled: permissions, owners and times (they stay as they were
  last set), extended attributes, symlinks (refused with ENOSYS), and torn
  writes. Data written but not synced is undone whole; a real disk might
  keep any part of it (readers must check what they read, as the journal's
  checksums do), which this model does not try.
* Locks (``flock``, ``fcntl``) are the kernel's own: the filesystem does
  not implement the lock operations, so FUSE keeps them locally, with the
  usual semantics for processes on this machine.

**I/O errors.** ``fail_fsync(pattern, count)`` makes the next ``count``
fsyncs (files or folders) whose path matches the glob ``pattern`` (relative
to the mount, e.g. ``spool/journal/*``) fail with EIO, as a disk that
failed its writeback would. As on Linux after a failed writeback, the data
that failed is lost for good: it is not made durable by a later fsync of
the same file that succeeds (the bytes written since the last good sync
stay unsynced in the model, reverting to their synced value or to zeros).
A folder fsync that fails records nothing.

Run it as ``python fusefs.py STATE_DIR MOUNTPOINT CONTROL_SOCKET``; it
serves in the foreground until unmounted. Commands arrive on the control
socket as JSON lines (``cut``, ``fail_fsync``, ``clear_failures``,
``stats``: counts and the paths whose fsync failed); see
``PowerLossFS`` in ``harness.py`` for the test side. When unmounted after a
``cut``, it rolls the backing folder back and prints a JSON summary.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shutil
import socket
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import mfusepy as fuse


def readable(flags: int) -> int:
    """Open flags with write-only widened to read-write: the model reads synced bytes before they change."""
    if flags & os.O_ACCMODE == os.O_WRONLY:
        return (flags & ~os.O_ACCMODE) | os.O_RDWR
    return flags


class Node:
    """A file or folder, independent of its names (a renamed file is the same node)."""

    __slots__ = ("is_dir", "ino", "mode", "entries", "durable", "named", "durable_len", "durable_bytes",
                 "dirty_from", "lost")

    def __init__(self, *, is_dir: bool, ino: int, mode: int, size: int = 0) -> None:
        self.is_dir = is_dir
        self.ino = ino  # the backing inode; never reused while mounted (unlinked files are kept)
        self.mode = mode
        # Folders: live entries (None until first read from the backing folder) and durable entries.
        self.entries: dict[str, Node] | None = None
        self.durable: dict[str, Node] | None = None
        self.named: dict[tuple[int, str], int] = {}  # folders: (parent, name) -> when given (0: at mount)
        # Files: the durable content is backing[:durable_len], or durable_bytes once that range changed.
        self.durable_len = size
        self.durable_bytes: bytes | None = None
        self.dirty_from: int | None = None  # lowest offset changed since the last good sync
        self.lost: list[tuple[int, int]] = []  # ranges whose writeback failed: never durable

    # -- files ---------------------------------------------------------------

    def before_change(self, fd: int, offset: int) -> None:
        """Keep the synced bytes before a write or truncate at ``offset`` overwrites them."""
        if offset < self.durable_len and self.durable_bytes is None:
            self.durable_bytes = os.pread(fd, self.durable_len, 0)
        self.dirty_from = offset if self.dirty_from is None else min(self.dirty_from, offset)

    def synced(self, fd: int) -> None:
        size = os.fstat(fd).st_size
        if self.lost:
            old = self._durable(fd)
            data = bytearray(os.pread(fd, size, 0))
            for start, end in self.lost:
                end = min(end, size)
                if start < end:
                    data[start:end] = old[start:end].ljust(end - start, b"\0")
            self.durable_bytes, self.durable_len = bytes(data), size
        else:
            self.durable_bytes, self.durable_len = None, size
        self.dirty_from = None

    def sync_failed(self, fd: int) -> None:
        if self.dirty_from is not None:
            self.lost.append((self.dirty_from, os.fstat(fd).st_size))

    def _durable(self, fd: int) -> bytes:
        return self.durable_bytes if self.durable_bytes is not None else os.pread(fd, self.durable_len, 0)

    def restore(self, path: str) -> None:
        """Give the backing file its durable content."""
        if self.durable_bytes is not None:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                view = memoryview(self.durable_bytes)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        elif os.lstat(path).st_size != self.durable_len:
            os.truncate(path, self.durable_len)


class PowerLossOperations(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(self, state: Path) -> None:
        self.root = str(state / "root")
        self.graveyard = state / "graveyard"  # unlinked files, kept so a durable name can bring them back
        self.graveyard.mkdir(exist_ok=True)
        self.mutex = threading.RLock()
        self.cut = False
        self.by_ino: dict[int, Node] = {}
        self.clock = 0  # orders the names a folder is given
        st = os.lstat(self.root)
        self.top = self._node(st)
        self.handles: dict[int, tuple[Node, bool]] = {}  # fd -> (node, opened with O_APPEND)
        self.fail_rules: list[list[Any]] = []  # [pattern, remaining count]
        self.counts = {"fsync": 0, "fsyncdir": 0, "eio": 0}
        self.failed: list[str] = []  # paths whose fsync failed, in order

    # -- the model -------------------------------------------------------------

    def _node(self, st: os.stat_result) -> Node:
        node = self.by_ino.get(st.st_ino)
        if node is None:
            node = Node(is_dir=stat.S_ISDIR(st.st_mode), ino=st.st_ino, mode=stat.S_IMODE(st.st_mode), size=st.st_size)
            self.by_ino[st.st_ino] = node
        return node

    def _entries(self, node: Node, real: str) -> dict[str, Node]:
        """A folder's live entries, read from the backing folder the first time (all durable then)."""
        if node.entries is None:
            node.entries = {name: self._node(os.lstat(os.path.join(real, name))) for name in os.listdir(real)}
            node.durable = dict(node.entries)
        return node.entries

    def _real(self, path: str) -> str:
        return self.root + path if path != "/" else self.root

    def _resolve(self, path: str) -> Node:
        node, real = self.top, self.root
        for name in [p for p in path.split("/") if p]:
            if not node.is_dir:
                raise fuse.FuseOSError(errno.ENOTDIR)
            child = self._entries(node, real).get(name)
            real = os.path.join(real, name)
            if child is None:
                raise fuse.FuseOSError(errno.ENOENT)
            node = child
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, name = path.rsplit("/", 1)
        parent = self._resolve(head or "/")
        if not parent.is_dir:
            raise fuse.FuseOSError(errno.ENOTDIR)
        self._entries(parent, self._real(head or "/"))
        return parent, name

    def _bury(self, node: Node, real: str) -> None:
        """Keep a file's inode alive (and its number unique) after it loses a name."""
        grave = self.graveyard / str(node.ino)
        if not grave.exists():
            os.link(real, grave)

    def _alive(self) -> None:
        if self.cut:
            raise fuse.FuseOSError(errno.EIO)

    def _should_fail(self, path: str) -> bool:
        rel = path.lstrip("/")
        for rule in self.fail_rules:
            if rule[1] != 0 and fnmatch.fnmatch(rel, rule[0]):
                if rule[1] > 0:
                    rule[1] -= 1
                self.counts["eio"] += 1
                if rel not in self.failed:
                    self.failed.append(rel)
                return True
        return False

    # -- reading ---------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self.mutex:
            self._alive()
            st = os.fstat(fh) if fh is not None else os.lstat(self._real(path))
        return {key: getattr(st, key) for key in (
            "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_blocks", "st_blksize")} | {
            "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        with self.mutex:
            self._alive()
            real = self._real(path)
            names = [(".", os.lstat(real)), ("..", os.lstat(os.path.dirname(real)))]
            with os.scandir(real) as entries:
                names += [(e.name, e.stat(follow_symlinks=False)) for e in entries]
        return [(name, {"st_ino": st.st_ino, "st_mode": st.st_mode}, 0) for name, st in names]

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.root)
        return {key: getattr(st, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag", "f_frsize",
            "f_namemax")}

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._alive()
        return os.pread(fh, size, offset)

    # -- names -----------------------------------------------------------------

    def mkdir(self, path: str, mode: int) -> int:
        with self.mutex:
            self._alive()
            parent, name = self._parent(path)
            real = self._real(path)
            os.mkdir(real, mode)
            node = self._node(os.lstat(real))
            node.entries, node.durable = {}, {}
            assert parent.entries is not None
            parent.entries[name] = node
            self.clock += 1
            node.named[(id(parent), name)] = self.clock
        return 0

    def rmdir(self, path: str) -> int:
        with self.mutex:
            self._alive()
            parent, name = self._parent(path)
            node = self._resolve(path)
            self._entries(node, self._real(path))
            os.rmdir(self._real(path))
            assert parent.entries is not None
            del parent.entries[name]
            self.by_ino.pop(node.ino, None)  # a folder's inode number may be reused
        return 0

    def create(self, path: str, mode: int, flags: int) -> int:
        with self.mutex:
            self._alive()
            parent, name = self._parent(path)
            assert parent.entries is not None
            real = self._real(path)
            existing = parent.entries.get(name)
            if existing is not None and flags & os.O_TRUNC:
                fd = os.open(real, os.O_RDONLY)
                try:
                    existing.before_change(fd, 0)
                finally:
                    os.close(fd)
            fd = os.open(real, readable(flags) | os.O_CREAT, mode)
            node = existing or self._node(os.fstat(fd))
            if existing is None:
                node.durable_len = 0
            parent.entries[name] = node
            self.handles[fd] = (node, bool(flags & os.O_APPEND))
        return fd

    def mknod(self, path: str, mode: int, dev: int) -> int:
        with self.mutex:
            self._alive()
            parent, name = self._parent(path)
            real = self._real(path)
            os.mknod(real, mode, dev)
            node = self._node(os.lstat(real))
            node.durable_len = 0
            assert parent.entries is not None
            parent.entries[name] = node
        return 0

    def unlink(self, path: str) -> int:
        with self.mutex:
            self._alive()
            parent, name = self._parent(path)
            node = self._resolve(path)
            real = self._real(path)
            self._bury(node, real)
            os.unlink(real)
            assert parent.entries is not None
            del parent.entries[name]
        return 0

    def rename(self, old: str, new: str) -> int:
        with self.mutex:
            self._alive()
            src_parent, src_name = self._parent(old)
            dst_parent, dst_name = self._parent(new)
            node = self._resolve(old)
            assert src_parent.entries is not None and dst_parent.entries is not None
            target = dst_parent.entries.get(dst_name)
            if target is node:
                return 0  # two names of one file: rename does nothing
            if target is not None and not target.is_dir:
                self._bury(target, self._real(new))
            elif target is not None:
                self._entries(target, self._real(new))
            os.rename(self._real(old), self._real(new))
            if target is not None and target.is_dir:
                self.by_ino.pop(target.ino, None)
            del src_parent.entries[src_name]
            dst_parent.entries[dst_name] = node
            if node.is_dir:
                self.clock += 1
                node.named[(id(dst_parent), dst_name)] = self.clock
        return 0

    def link(self, target: str, source: str) -> int:
        with self.mutex:
            self._alive()
            node = self._resolve(source)
            parent, name = self._parent(target)
            os.link(self._real(source), self._real(target))
            assert parent.entries is not None
            parent.entries[name] = node
        return 0

    def chmod(self, path: str, mode: int) -> int:
        with self.mutex:
            self._alive()
            node = self._resolve(path)
            os.chmod(self._real(path), mode)
            node.mode = stat.S_IMODE(mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self.mutex:
            self._alive()
            os.lchown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self.mutex:
            self._alive()
            os.utime(self._real(path), ns=times) if times else os.utime(self._real(path))
        return 0

    # -- data ------------------------------------------------------------------

    def open(self, path: str, flags: int) -> int:
        with self.mutex:
            self._alive()
            node = self._resolve(path)
            if node.is_dir:
                raise fuse.FuseOSError(errno.EISDIR)
            fd = os.open(self._real(path), readable(flags) & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC))
            if flags & os.O_TRUNC:  # keep the synced bytes first
                node.before_change(fd, 0)
                os.ftruncate(fd, 0)
            self.handles[fd] = (node, bool(flags & os.O_APPEND))
        return fd

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            self._alive()
            node, append = self.handles[fh]
            if append:
                offset = os.fstat(fh).st_size
            node.before_change(fh, offset)
            return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self.mutex:
            self._alive()
            if fh is not None:
                node = self.handles[fh][0]
                node.before_change(fh, length)
                os.ftruncate(fh, length)
                return 0
            node = self._resolve(path)
            fd = os.open(self._real(path), os.O_RDWR)
            try:
                node.before_change(fd, length)
                os.ftruncate(fd, length)
            finally:
                os.close(fd)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # close(2) makes nothing durable

    def release(self, path: str, fh: int) -> int:
        with self.mutex:
            self.handles.pop(fh, None)
            os.close(fh)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self.mutex:
            self._alive()
            node = self.handles[fh][0]
            if self._should_fail(path):
                node.sync_failed(fh)
                raise fuse.FuseOSError(errno.EIO)
            node.synced(fh)
            self.counts["fsync"] += 1
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self.mutex:
            self._alive()
            node = self._resolve(path)
            if self._should_fail(path):
                raise fuse.FuseOSError(errno.EIO)
            node.durable = dict(self._entries(node, self._real(path)))
            self.counts["fsyncdir"] += 1
        return 0

    # -- control ---------------------------------------------------------------

    def command(self, request: dict[str, Any]) -> dict[str, Any]:
        with self.mutex:
            match request.get("cmd"):
                case "cut":
                    self.cut = True
                case "fail_fsync":
                    self.fail_rules.append([request["pattern"], int(request.get("count", 1))])
                case "clear_failures":
                    self.fail_rules.clear()
                case "stats":
                    pass
                case other:
                    return {"error": f"unknown command {other!r}"}
            return {"ok": True, **self.counts, "failed": self.failed}

    def rollback(self, state: Path) -> dict[str, int]:
        """Rewrite the backing folder to the durable model (the filesystem is unmounted)."""
        where: dict[int, str] = {}
        for folder in (self.root, str(self.graveyard)):
            for dirpath, dirnames, filenames in os.walk(folder):
                for name in dirnames + filenames:
                    path = os.path.join(dirpath, name)
                    where.setdefault(os.lstat(path).st_ino, path)
        report = {"files": 0, "folders": 0}
        restored: set[int] = set()
        fresh = state / "root.new"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(mode=self.top.mode)

        if self.top.durable is None:
            self._entries(self.top, self.root)
        # A folder has one parent: where durable records name it twice (a rename whose destination
        # was fsynced but not its source), it keeps the older name.
        home: dict[int, tuple[int, tuple[int, str]]] = {}
        seen: set[int] = set()
        todo = [self.top]
        while todo:
            folder = todo.pop()
            if id(folder) in seen or folder.durable is None:
                continue
            seen.add(id(folder))
            for name, child in folder.durable.items():
                if child.is_dir:
                    key = (id(folder), name)
                    rank = child.named.get(key, 0)
                    if id(child) not in home or rank < home[id(child)][0]:
                        home[id(child)] = (rank, key)
                    todo.append(child)
        report["folders_renamed_back"] = 0

        def build(folder: Node, target: Path, depth: int) -> None:
            assert folder.durable is not None
            for name, child in folder.durable.items():
                dst = target / name
                if child.is_dir and home[id(child)][1] != (id(folder), name):
                    report["folders_renamed_back"] += 1
                elif child.is_dir and child.durable is None:  # never touched since mount: as it was
                    shutil.copytree(where[child.ino], dst, copy_function=os.link, symlinks=True)
                elif child.is_dir:
                    if depth > 64:
                        raise RuntimeError("folder cycle in the durable model")
                    dst.mkdir(mode=child.mode)
                    build(child, dst, depth + 1)
                    report["folders"] += 1
                else:
                    src = where[child.ino]
                    if child.ino not in restored:
                        child.restore(src)
                        restored.add(child.ino)
                    os.link(src, dst)
                    report["files"] += 1

        build(self.top, fresh, 0)
        old = state / "root.old"
        os.rename(self.root, old)
        os.rename(fresh, self.root)
        shutil.rmtree(old)
        shutil.rmtree(self.graveyard)
        return report


def serve_control(ops: PowerLossOperations, path: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def loop() -> None:
        while True:
            conn, _ = server.accept()
            with conn, conn.makefile("rwb") as stream:
                for line in stream:
                    stream.write(json.dumps(ops.command(json.loads(line))).encode() + b"\n")
                    stream.flush()

    threading.Thread(target=loop, daemon=True).start()


def main(argv: list[str]) -> int:
    state, mountpoint, control = Path(argv[0]), argv[1], argv[2]
    ops = PowerLossOperations(state)
    serve_control(ops, control)
    fuse.FUSE(ops, mountpoint, foreground=True, fsname="powerlossfs", use_ino=True)
    report: dict[str, Any] = {"cut": ops.cut, **ops.counts}
    if ops.cut:
        report |= ops.rollback(state)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
