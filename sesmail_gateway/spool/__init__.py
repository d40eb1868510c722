"""The durable queue: journal segments first, one folder per message only where it must outlive them.

Each job is a module of its own: the layout and queue ids (layout.py),
message folders and state moves (folders.py), acceptance into journal
segments (acceptance.py), the checkpoint (checkpoint.py), and start-up
recovery and segment adoption (recovery.py). ``Spool`` puts them together
for the daemon, its SMTP workers and the CLI.

The durability model is POSIX's and nothing more (fsutil.py): a file's
data is durable once it is fsynced or fdatasynced, a name in a folder once
that folder is fsynced; ``syncfs`` and ``sync`` are never used.

``enqueue`` returns (and the session answers 250) only when the message is
durable: appended to its process's journal segment and fdatasynced, the
segment's name made durable when it was created (journal.py). One append
and one fdatasync serve every session that arrived meanwhile (group commit),
and no file is created on that path.

With a runner attached (``on_accepted``), that is all acceptance writes:
the runner gets the record (the bytes, or where to read them) and delivers
it without a spool folder (runner.py, segments.py). The Maildir and archive
copies it writes are fsynced by the runner's next checkpoint; only then is
the record settled. A message that must outlive its segment (deferred,
held, dead, refused at DATA, or not tried within a few seconds) gets a
folder first, written with its files and folder fsynced in tmp/ and renamed
into its state folder, which is fsynced before tmp/. A segment is deleted
only when its writer has sealed it and every record in it is settled; one
whose fdatasync failed never is. Start-up, and the death of an SMTP worker,
adopt the segments no process holds and deliver their records again:
Maildir and archive copies by the same names, remote deliveries skipped
when the delivered log has them.

Without a runner (a spool used on its own), the message folder is written
in the background and made durable by a checkpoint every second before the
journal is deleted; ``recover`` replays journals into folders.

A message leaves a state by being linked into its new state first (files
fsynced, folder and its state folder fsynced) and removed from the old one
after, so at every moment one durable copy exists; a crash in between
leaves two, and recovery keeps the newer. A failed fsync is sticky: this
process deletes no journal and retires nothing afterwards, and the next
start-up replays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from sesmail_gateway.fsutil import PendingSyncs
from sesmail_gateway.message import INCOMING, STATES, QueueItem
from sesmail_gateway.segments import Segments
from sesmail_gateway.spool import recovery
from sesmail_gateway.spool.acceptance import IN_MEMORY_MAX, MAX_UNWRITTEN, Acceptance, Accepted
from sesmail_gateway.spool.checkpoint import CLOCK_MARGIN_NS, Checkpoint, run_checkpoints
from sesmail_gateway.spool.folders import Folders
from sesmail_gateway.spool.layout import CORRUPT, DONE, JOURNAL, MESSAGE, META, TMP, SpoolError, new_queue_id
from sesmail_gateway.spool.recovery import Recovery

log = logging.getLogger(__name__)

__all__ = [
    "CLOCK_MARGIN_NS", "CORRUPT", "DONE", "IN_MEMORY_MAX", "JOURNAL", "MAX_UNWRITTEN", "MESSAGE", "META", "TMP",
    "Accepted", "Recovery", "Spool", "SpoolError", "new_queue_id", "run_checkpoints",
]


class Spool:
    """The queue on disk: journal segments, message folders, and the checkpoint that ties them."""

    def __init__(
        self,
        root: Path,
        *,
        on_commit: Callable[[float, int], None] | None = None,
        on_ready: Callable[[str], None] | None = None,
        on_accepted: Callable[[Accepted], None] | None = None,
        on_sealed: Callable[[str, bool, int], None] | None = None,
        sweeper: bool = False,
        create: bool = True,
    ) -> None:
        """``create=False`` opens the spool for reading only: nothing is created on disk.

        With ``on_accepted`` (a runner takes the messages) no folder is
        written at acceptance: the runner delivers from the journal record,
        and ``on_sealed`` hears of each journal segment this process will
        append to no more. Without it every message is written to its folder.
        """
        self.root = root
        self.folders = Folders(root, create=create)
        self.syncs = PendingSyncs()  # what the runner's writers leave for the checkpoint to fsync
        self.segments = Segments(root / JOURNAL)  # the runner's view of every process's journal segments
        self.acceptance = Acceptance(self.folders, self.syncs, on_commit=on_commit)
        self.acceptance.on_ready = on_ready
        self.acceptance.on_accepted = on_accepted
        self.acceptance.on_sealed = on_sealed
        self.checkpoints = Checkpoint(self.folders, self.acceptance, self.segments, self.syncs, sweeper=sweeper)

    # The runner's hooks, set once it exists (after the spool).

    @property
    def on_ready(self) -> Callable[[str], None] | None:
        """Told each queue id whose folder is written (the runner's doorbell)."""
        return self.acceptance.on_ready

    @on_ready.setter
    def on_ready(self, hook: Callable[[str], None] | None) -> None:
        self.acceptance.on_ready = hook

    @property
    def on_accepted(self) -> Callable[[Accepted], None] | None:
        return self.acceptance.on_accepted

    @on_accepted.setter
    def on_accepted(self, hook: Callable[[Accepted], None] | None) -> None:
        self.acceptance.on_accepted = hook

    @property
    def on_sealed(self) -> Callable[[str, bool, int], None] | None:
        return self.acceptance.on_sealed

    @on_sealed.setter
    def on_sealed(self, hook: Callable[[str, bool, int], None] | None) -> None:
        self.acceptance.on_sealed = hook

    # -- acceptance and durability -------------------------------------------

    async def enqueue(self, item: QueueItem, *chunks: bytes) -> None:
        """Store the message durably (acceptance.py); raises OSError on any failure."""
        await self.acceptance.enqueue(item, *chunks)

    def checkpoint(self) -> None:
        self.checkpoints.run()

    def sync_now(self) -> None:
        self.checkpoints.sync_now()

    def finish(self, item: QueueItem) -> None:
        self.checkpoints.finish(item)

    def finishing(self, queue_id: str) -> bool:
        return self.checkpoints.finishing(queue_id)

    def oldest_journal_ns(self) -> int | None:
        return self.checkpoints.oldest_journal_ns()

    async def close(self, timeout: float = 30.0) -> None:
        """At shutdown: finish writing folders (what cannot be written stays in the journal), then a last checkpoint."""
        await self.acceptance.finish_writes(timeout)
        try:
            await asyncio.to_thread(self.checkpoint)
        except OSError as exc:
            log.error("spool: last checkpoint failed (%s); the next start-up replays the journals", exc)
        self.acceptance.discard_empty()

    # -- folders -------------------------------------------------------------

    def folder(self, item: QueueItem) -> Path:
        return self.folders.folder(item)

    def message_path(self, item: QueueItem) -> Path:
        return self.folders.message_path(item)

    def load(self, state: str, queue_id: str) -> QueueItem:
        return self.folders.load(state, queue_id)

    def find(self, queue_id: str) -> QueueItem:
        return self.folders.find(queue_id)

    def ids(self, state: str) -> list[str]:
        return self.folders.ids(state)

    def items(self, state: str) -> Iterator[QueueItem]:
        return self.folders.items(state)

    def counts(self) -> dict[str, int]:
        """Messages per state; delivered ones waiting for the checkpoint to retire them do not count."""
        finishing = self.checkpoints.finishing_ids()
        counts = {state: len(set(self.ids(state)) - finishing) for state in STATES}
        counts[INCOMING] += self.segments.waiting()  # accepted, held by the runner without a folder
        return counts

    def claim(self, state: str, queue_id: str) -> QueueItem:
        if self.finishing(queue_id):
            raise SpoolError(f"message {queue_id} is already delivered")
        return self.folders.claim(state, queue_id)

    def save(self, item: QueueItem) -> None:
        self.folders.save(item)

    def move(self, item: QueueItem, state: str) -> None:
        self.folders.move(item, state)
        self.acceptance.forget(item.id)

    def remove(self, item: QueueItem) -> None:
        self.folders.remove(item)

    def materialize(self, item: QueueItem, data: bytes) -> None:
        self.folders.materialize(item, data)

    # -- start-up and adoption (recovery.py) -----------------------------------

    def recover(self, *, replay: bool = True) -> Recovery:
        return recovery.recover(self.folders, self.syncs, replay=replay)

    def replay_orphaned_journals(self) -> int:
        return recovery.replay_orphaned_journals(self.folders, self.syncs)

    def orphaned_segments(self, pid: int | None = None, *, idle_for: float = 0.0) -> list[Path]:
        return recovery.orphaned_segments(self.folders, self.segments, pid, idle_for=idle_for)

    def adopt(self, paths: list[Path]) -> Iterator[Accepted]:
        return recovery.adopt(self.folders, self.segments, paths)
