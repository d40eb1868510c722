"""The acceptance journal: one append and one fdatasync make a whole batch durable.

Every accepted message is appended (metadata and bytes) to the process's
journal before its 250. One ``fdatasync`` on one file serves every session
that joined the batch, which is what makes group commit cheap; the file's
name is made durable (its folder fsynced) when it is created, before its
first record is acknowledged. The spool folders themselves are written
without syncing and made durable later, by a checkpoint, after which the
journal file is deleted.

After a crash, ``read_records`` gives back every complete record; the
spool re-creates any message whose folder did not survive. A torn record at
the tail (a batch whose fdatasync never finished, so never acknowledged) is
ignored.

File names are ``<created-ns>-<pid>.wal``; the owner holds an exclusive
flock, so a process can tell a live journal from an orphaned one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from sesmail_gateway.fsutil import fsync_dir

MAGIC = b"SMJ1"
_HEAD = struct.Struct("!4sQQ")  # magic, metadata length, message length
_TAIL = struct.Struct("!I")  # crc32 of metadata + message
SUFFIX = ".wal"


@dataclass(frozen=True)
class Record:
    meta: bytes
    message: bytes


def encode(meta: bytes, chunks: Sequence[bytes]) -> list[bytes]:
    """The buffers of one record, ready for writev (the message is not copied)."""
    size = sum(len(c) for c in chunks)
    crc = zlib.crc32(meta)
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return [_HEAD.pack(MAGIC, len(meta), size), meta, *chunks, _TAIL.pack(crc)]


def created_ns(path: Path) -> int:
    """When a journal file was started, from its name (0 if the name is foreign)."""
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else 0


class Journal:
    """One journal file, appended to by one process.

    ``pending`` counts records whose spool folder is not written yet; a
    journal may be deleted only when it is closed, nothing is pending, and
    a filesystem flush has happened since (the spool's checkpoint).
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"{time.time_ns()}-{os.getpid()}{SUFFIX}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.size = 0
        self.records = 0  # appended and durable
        self.pending = 0
        self.broken = False  # an fdatasync failed: this file is never deleted by its owner
        try:
            fsync_dir(folder)  # the file's name is durable before any record in it is acknowledged
        except OSError:
            self.discard()
            raise

    def append(self, buffers: Sequence[bytes]) -> int:
        """Write the buffers and make them durable before returning; returns the offset they start at.

        On failure (a full disk, an I/O error) the partial batch is cut off
        again, as far as the OS allows, and the caller must stop appending
        to this file: a torn record would hide every record after it from a
        replay.
        """
        start = self.size
        views = [memoryview(b) for b in buffers if b]
        try:
            while views:
                written = os.writev(self._fd, views[:1024])
                self.size += written
                while written and views:
                    if written >= len(views[0]):
                        written -= len(views[0])
                        views.pop(0)
                    else:
                        views[0] = views[0][written:]
                        written = 0
            try:
                os.fdatasync(self._fd)
            except OSError:
                self.broken = True
                raise
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
                self.size = start
            raise
        return start

    def seal(self) -> None:
        """No more appends: close the file and release its lock; whoever settles its records deletes it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Delete the file and release its lock (a broken journal is only closed: start-up replays it)."""
        if not self.broken:
            self.path.unlink(missing_ok=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def record_size(meta: bytes, message_size: int) -> int:
    return _HEAD.size + len(meta) + message_size + _TAIL.size


def read_record_at(fd: int, offset: int) -> Record:
    """The record at ``offset`` of an open journal file; ValueError if it is not whole and intact."""
    head = os.pread(fd, _HEAD.size, offset)
    if len(head) < _HEAD.size:
        raise ValueError("journal record cut short")
    magic, meta_len, msg_len = _HEAD.unpack(head)
    if magic != MAGIC:
        raise ValueError("no journal record at this offset")
    body = os.pread(fd, meta_len + msg_len + _TAIL.size, offset + _HEAD.size)
    if len(body) < meta_len + msg_len + _TAIL.size:
        raise ValueError("journal record cut short")
    (crc,) = _TAIL.unpack_from(body, meta_len + msg_len)
    meta, message = body[:meta_len], body[meta_len:meta_len + msg_len]
    if zlib.crc32(message, zlib.crc32(meta)) != crc:
        raise ValueError("journal record damaged")
    return Record(meta, message)


def owner_pid(path: Path) -> int:
    """The pid in a journal file's name (0 if the name is foreign)."""
    tail = path.name.removesuffix(SUFFIX).rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def journal_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if p.is_file())


def is_orphaned(path: Path) -> bool:
    """True when no live process holds the journal's lock."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def read_records(path: Path) -> Iterator[Record]:
    """Every complete, intact record, in order; stops at the first torn or corrupt one."""
    for _, record in read_records_with_offsets(path):
        yield record


def read_records_with_offsets(path: Path) -> Iterator[tuple[int, Record]]:
    """``read_records`` with each record's offset in the file."""
    data = path.read_bytes()
    offset = 0
    while offset + _HEAD.size <= len(data):
        magic, meta_len, msg_len = _HEAD.unpack_from(data, offset)
        end = offset + _HEAD.size + meta_len + msg_len + _TAIL.size
        if magic != MAGIC or end > len(data):
            return
        meta_start = offset + _HEAD.size
        meta = data[meta_start: meta_start + meta_len]
        message = data[meta_start + meta_len: meta_start + meta_len + msg_len]
        (crc,) = _TAIL.unpack_from(data, end - _TAIL.size)
        if zlib.crc32(message, zlib.crc32(meta)) != crc:
            return
        yield offset, Record(meta, message)
        offset = end
