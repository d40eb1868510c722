"""Start-up and adoption: what a process that died left in the spool, put back to work.

At start-up, before any session: folders half-written in tmp/ were never
acknowledged and go; half-done moves and removals are undone; where a crash
left a message in two states the newer copy wins; folders left in active/
by older versions go back to incoming/.

Journal segments no live process holds are then either adopted by the
runner (``adopt``: their records are delivered from the segment, without a
folder) or, for a spool used without a runner, replayed into folders
(``replay_orphaned_journals``). Either way a record already retired (its
tombstone in done/) or whole in a folder needs nothing; a folder a crash
tore is removed and the record used instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sesmail_gateway import journal
from sesmail_gateway.fsutil import PendingSyncs, fsync_dir, write_file
from sesmail_gateway.message import ACTIVE, INCOMING, REJECTED, STATES, QueueItem
from sesmail_gateway.segments import Segments
from sesmail_gateway.spool.acceptance import Accepted
from sesmail_gateway.spool.folders import Folders
from sesmail_gateway.spool.layout import DONE, JOURNAL, MESSAGE, META, TMP

log = logging.getLogger(__name__)


@dataclass
class Recovery:
    resumed: int = 0
    discarded_tmp: int = 0
    corrupt: int = 0
    replayed: int = 0


def recover(folders: Folders, syncs: PendingSyncs, *, replay: bool = True) -> Recovery:
    """At start-up, before any session: replay journals, resume ``active``, drop unacknowledged writes.

    ``replay=False`` leaves the journals to the runner (``adopt``), which
    delivers their records without writing folders first.
    """
    root = folders.root
    report = Recovery()
    for entry in os.scandir(root / TMP):
        shutil.rmtree(entry.path, ignore_errors=True)
        report.discarded_tmp += 1
    _drop_leftovers(folders)
    if replay:
        report.replayed = replay_orphaned_journals(folders, syncs)
    # Folders are not opened here (start-up stays fast with a large queue): one that is damaged
    # is set aside when it is first read (load, claim).
    for queue_id in folders.ids(ACTIVE):  # left by versions that claimed by renaming
        os.rename(root / ACTIVE / queue_id, root / INCOMING / queue_id)
        report.resumed += 1
    fsync_dir(root / INCOMING)
    fsync_dir(root / ACTIVE)
    return report


def _drop_leftovers(folders: Folders) -> None:
    """Half-done moves and removals; and where a crash left a message in two states, the older copy."""
    seen: dict[str, list[Path]] = {}
    for state in STATES:
        for entry in os.scandir(folders.root / state):
            if entry.name.startswith("."):  # .ID.moving (never renamed into place), .ID.removing
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                seen.setdefault(entry.name, []).append(Path(entry.path))
    for queue_id, copies in seen.items():
        if len(copies) < 2:
            continue
        copies.sort(key=_meta_mtime)
        for stale in copies[:-1]:
            log.warning("spool: %s found in %s and %s after a crash; keeping %s", queue_id,
                        stale.parent.name, copies[-1].parent.name, copies[-1].parent.name)
            folders.discard(stale)


def _meta_mtime(folder: Path) -> int:
    try:
        return (folder / META).stat().st_mtime_ns
    except OSError:
        return -1


def replay_orphaned_journals(folders: Folders, syncs: PendingSyncs) -> int:
    """Put back every journaled message whose folder is missing or damaged; delete those journals.

    Every message a journal holds is made durable in its folder (files,
    folder, state folder fsynced) before that journal is deleted: a
    folder that survived a process crash may exist only in the page cache.
    """
    root = folders.root
    orphans = [p for p in journal.journal_files(root / JOURNAL) if journal.is_orphaned(p)]
    replayed = 0
    files: list[Path] = []
    written: set[Path] = set()
    for path in orphans:
        for record in journal.read_records(path):
            folder, restored = _replay(folders, record)
            replayed += restored
            if folder is not None:
                files += (folder / MESSAGE, folder / META)
                written.update((folder, folder.parent))
    if orphans:
        syncs.flush(also_files=files, also_folders=written)
        for path in orphans:
            path.unlink(missing_ok=True)
        fsync_dir(root / JOURNAL)
    return replayed


def _replay(folders: Folders, record: journal.Record) -> tuple[Path | None, int]:
    """The folder that now holds the record's message (None if it was retired), and 1 if restored."""
    try:
        item = QueueItem.from_dict(json.loads(record.meta))
    except (ValueError, TypeError):
        log.error("spool: journal record with unreadable metadata skipped")
        return None, 0
    kept = kept_copy(folders, item, record.message)
    if kept is not None:
        return (None if kept.parent.name == DONE else kept), 0
    shutil.rmtree(folders.root / TMP / item.id, ignore_errors=True)
    # Back to the state it was accepted in: a message refused at DATA stays refused.
    folder = folders.root / (item.state if item.state in (INCOMING, REJECTED) else INCOMING) / item.id
    folder.mkdir(mode=0o750)
    write_file(folder / MESSAGE, record.message, sync=False, mode=0o600)
    write_file(folder / META, record.meta, sync=False)
    log.warning("spool: %s restored from the journal", item.id)
    return folder, 1


def kept_copy(folders: Folders, item: QueueItem, message: bytes) -> Path | None:
    """Where a journaled message lives on: its tombstone in done/, or a whole folder. None: nowhere.

    A folder a crash tore is removed (the journal record has the whole message).
    """
    retired = folders.root / DONE / item.id
    if retired.exists():
        return retired
    for state in STATES:
        folder = folders.root / state / item.id
        if folder.exists():
            if _intact(folder, message):
                return folder
            shutil.rmtree(folder)
    return None


def _intact(folder: Path, message: bytes) -> bool:
    try:
        json.loads((folder / META).read_bytes())
        return (folder / MESSAGE).read_bytes() == message
    except (OSError, ValueError):
        return False


def orphaned_segments(folders: Folders, segments: Segments, pid: int | None = None, *,
                      idle_for: float = 0.0) -> list[Path]:
    """Journal segments no live process holds (of process ``pid`` only, when given).

    ``idle_for`` > 0: only segments the runner does not track that were
    last written that many seconds ago (a worker of an earlier daemon
    that finished its sessions after this one started).
    """
    found = []
    for path in journal.journal_files(folders.root / JOURNAL):
        if pid is not None and journal.owner_pid(path) != pid:
            continue
        if idle_for:
            try:
                if segments.tracked(path.name) or time.time() - path.stat().st_mtime < idle_for:
                    continue
            except FileNotFoundError:
                continue
        if journal.is_orphaned(path):
            found.append(path)
    return found


def adopt(folders: Folders, segments: Segments, paths: list[Path]) -> Iterator[Accepted]:
    """The records of orphaned journal segments that still need the runner. Blocks.

    At start-up every segment is orphaned; later, those of an SMTP worker
    that died. A record already seen, retired (a tombstone in done/) or
    whole in a folder needs nothing; a folder a crash tore is removed and
    the record delivered again. Each segment adopted counts as sealed.
    """
    for path in paths:
        name = path.name
        if not journal.is_orphaned(path):
            continue
        records = 0
        for offset, record in journal.read_records_with_offsets(path):
            records += 1
            try:
                item = QueueItem.from_dict(json.loads(record.meta))
            except (ValueError, TypeError):
                log.error("spool: journal record with unreadable metadata skipped in %s", name)
                continue
            if segments.seen(name, item.id):
                continue
            if kept_copy(folders, item, record.message) is not None:
                segments.known(name, item.id)
            elif segments.accepted(name, item.id):
                log.warning("spool: %s restored from the journal", item.id)
                yield Accepted(item, name, offset)
        segments.sealed(name, broken=False, records=records)
