"""The durable spool: enqueue, group commit, claim, state moves, recovery."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest

from sesmail_gateway.message import ACTIVE, DEFERRED, INCOMING, QueueItem, RecipientRoute
from sesmail_gateway.spool import CLOCK_MARGIN_NS, Spool, SpoolError, new_queue_id


def item(queue_id: str | None = None) -> QueueItem:
    return QueueItem(id=queue_id or new_queue_id(), sender="a@sender.test",
                     recipients=[RecipientRoute("bob@example.test", "*", "catch-all",
                                                [{"type": "maildir", "target": "mail"}])])


def test_queue_ids_are_unique_and_sortable() -> None:
    ids = [new_queue_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(i.isalnum() for i in ids)


async def test_enqueue_writes_both_files_into_the_state_folder(tmp_path: Path) -> None:
    ready: list[str] = []
    spool = Spool(tmp_path, on_ready=ready.append)
    queued = item()
    await spool.enqueue(queued, b"Received: x\r\n", b"Subject: s\r\n\r\nbody\r\n")
    await spool.close()
    assert ready == [queued.id]
    folder = tmp_path / INCOMING / queued.id
    assert (folder / "message.eml").read_bytes() == b"Received: x\r\nSubject: s\r\n\r\nbody\r\n"
    assert json.loads((folder / "meta.json").read_bytes())["sender"] == "a@sender.test"
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_concurrent_enqueues_share_group_commits(tmp_path: Path) -> None:
    batches: list[int] = []
    spool = Spool(tmp_path, on_commit=lambda seconds, size: batches.append(size))
    items = [item() for _ in range(50)]
    await asyncio.gather(*(spool.enqueue(i, b"x\r\n") for i in items))
    await spool.close()
    assert sorted(spool.ids(INCOMING)) == sorted(i.id for i in items)
    assert sum(batches) == 50
    # Fifty concurrent sessions must not cost fifty flushes.
    assert len(batches) < 50


async def test_a_failed_commit_raises_and_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queued = item()
    (tmp_path / "journal").rmdir()
    (tmp_path / "journal").write_text("not a folder")  # the journal cannot be created: no 250
    with pytest.raises(OSError):
        await spool.enqueue(queued, b"x\r\n")
    await spool.close()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert spool.ids(INCOMING) == []


class SyncLog:
    """Records every fsync/fdatasync by path (the OS is what is observed here), and refuses sync/syncfs."""

    def __init__(self, fail_on: str = "") -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail_on = fail_on
        self._fsync, self._fdatasync = os.fsync, os.fdatasync

    def _record(self, kind: str, fd: int, real: Callable[[int], None]) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if self.fail_on and path.endswith(self.fail_on):
            raise OSError(errno.EIO, "Input/output error")
        self.calls.append((kind, path))
        real(fd)

    def paths(self) -> list[str]:
        return [path for _, path in self.calls]

    def __enter__(self) -> SyncLog:
        def no_flush(*_: object) -> None:
            raise AssertionError("sync/syncfs must never be relied on")

        self._patches = [
            mock.patch("os.fsync", lambda fd: self._record("fsync", fd, self._fsync)),
            mock.patch("os.fdatasync", lambda fd: self._record("fdatasync", fd, self._fdatasync)),
            mock.patch("os.sync", no_flush),
        ]
        for patch in self._patches:
            patch.start()
        return self

    def __exit__(self, *_: object) -> None:
        for patch in self._patches:
            patch.stop()


async def test_enqueue_returns_after_the_journal_record_and_its_name_are_durable(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queued = item()
    with SyncLog() as syncs:
        await spool.enqueue(queued, b"x\r\n")
    journals = list((tmp_path / "journal").iterdir())
    assert len(journals) == 1
    # The journal's folder is fsynced when the file is created, then the record is fdatasynced.
    assert syncs.calls == [("fsync", str(tmp_path / "journal")), ("fdatasync", str(journals[0]))]
    await spool.close()


async def test_checkpoint_fsyncs_undelivered_folders_before_a_journal_goes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    waiting, delivered = item(), item()
    await spool.enqueue(waiting, b"x\r\n")
    await spool.enqueue(delivered, b"y\r\n")
    await asyncio.gather(*spool.acceptance.writing)
    journal = next((tmp_path / "journal").iterdir())
    spool.finish(spool.claim(INCOMING, delivered.id))
    seen_journal: list[bool] = []
    with SyncLog() as syncs:
        real = syncs._record

        def record(kind: str, fd: int, fn: Callable[[int], None]) -> None:
            seen_journal.append(journal.exists())
            real(kind, fd, fn)

        syncs._record = record  # type: ignore[method-assign]
        spool.checkpoint()
    folder = tmp_path / INCOMING / waiting.id
    synced = set(syncs.paths())
    assert {str(folder / "message.eml"), str(folder / "meta.json"), str(folder), str(tmp_path / INCOMING),
            str(tmp_path / "tmp")} <= synced  # renamed from tmp/: both folders, or the rename is not durable
    # A delivered message needs no durable folder.
    assert not any(delivered.id in path and "done" not in path for path in synced)
    assert not journal.exists() and (tmp_path / "done" / delivered.id).exists()
    # Everything the journal had to outlive was synced while it still existed.
    first_after = seen_journal.index(False) if False in seen_journal else len(seen_journal)
    assert str(folder / "message.eml") in syncs.paths()[:first_after]
    await spool.close()


async def test_a_failed_fsync_is_sticky_and_no_journal_is_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queued = item()
    await spool.enqueue(queued, b"x\r\n")
    await asyncio.gather(*spool.acceptance.writing)
    with SyncLog(fail_on="message.eml"), pytest.raises(OSError):
        spool.checkpoint()
    journals = list((tmp_path / "journal").iterdir())
    assert len(journals) == 1
    with SyncLog(), pytest.raises(OSError, match="an earlier fsync failed"):
        spool.checkpoint()  # the disk answers again: too late to trust what it dropped
    assert list((tmp_path / "journal").iterdir()) == journals
    crash(spool)
    assert Spool(tmp_path).replay_orphaned_journals() == 0  # the folder is intact; the replay makes it durable
    assert list((tmp_path / "journal").iterdir()) == []


async def test_a_failed_journal_fdatasync_is_answered_with_an_error_and_the_file_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with SyncLog(fail_on=".wal"), pytest.raises(OSError):
        await spool.enqueue(item(), b"never acknowledged\r\n")
    later = item()
    await spool.enqueue(later, b"acknowledged\r\n")
    await spool.close()
    assert len(list((tmp_path / "journal").iterdir())) == 2  # both kept for the next start-up


async def test_recover_resumes_active_and_drops_unacknowledged_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = item(), item()
    await spool.enqueue(first, b"x\r\n")
    await spool.enqueue(second, b"y\r\n")
    await spool.close()
    os.rename(tmp_path / INCOMING / first.id, tmp_path / ACTIVE / first.id)  # as older versions claimed
    (tmp_path / "tmp" / "half-written").mkdir()  # a crash before the 250
    broken = tmp_path / DEFERRED / "BROKEN"
    broken.mkdir()
    (broken / "meta.json").write_text("{}")  # message file missing

    report = Spool(tmp_path).recover()

    assert (report.resumed, report.discarded_tmp) == (1, 1)
    assert sorted(spool.ids(INCOMING)) == sorted([first.id, second.id])
    # A damaged folder is set aside when it is first read, not by a scan at start-up.
    with pytest.raises(SpoolError, match="moved to corrupt"):
        spool.claim(DEFERRED, "BROKEN")
    assert (tmp_path / "corrupt" / "BROKEN").exists()


def test_unreadable_metadata_is_set_aside_not_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    folder = tmp_path / INCOMING / "BAD1"
    folder.mkdir()
    (folder / "meta.json").write_text("{not json")
    (folder / "message.eml").write_bytes(b"x")
    assert list(spool.items(INCOMING)) == []
    assert (tmp_path / "corrupt" / "BAD1" / "message.eml").read_bytes() == b"x"


def test_find_refuses_path_tricks(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for bad in ("../etc", "", ".hidden"):
        with pytest.raises(SpoolError):
            spool.find(bad)


def crash(spool: Spool) -> None:
    """Forget the spool as a killed process would: journals stay, their locks go."""
    for journal_file in [spool.acceptance.journal, *spool.acceptance.closed]:
        if journal_file is not None:
            os.close(journal_file._fd)
            journal_file._fd = -1


async def test_checkpoint_retires_journals_once_folders_are_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await asyncio.gather(*(spool.enqueue(item(), b"x\r\n") for _ in range(10)))
    assert len(list((tmp_path / "journal").iterdir())) == 1
    await spool.close()
    assert list((tmp_path / "journal").iterdir()) == []
    assert len(spool.ids(INCOMING)) == 10


async def test_a_journaled_message_whose_folder_was_lost_is_restored(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    lost, torn, delivered = item(), item(), item()
    for queued in (lost, torn, delivered):
        await spool.enqueue(queued, b"Received: x\r\n", f"Subject: {queued.id}\r\n\r\nbody\r\n".encode())
    await asyncio.gather(*spool.acceptance.writing)
    # What a crash before the next checkpoint can leave behind:
    shutil.rmtree(tmp_path / INCOMING / lost.id)
    (tmp_path / INCOMING / torn.id / "message.eml").write_bytes(b"Rece")
    spool.folders.tombstone(spool.claim(INCOMING, delivered.id))  # delivered and retired
    crash(spool)
    with (tmp_path / "journal" / "1-999.wal").open("wb") as torn_tail:
        torn_tail.write(b"SMJ1\x00\x00")  # a batch whose fdatasync never finished

    report = Spool(tmp_path).recover()

    assert report.replayed == 2
    assert sorted(spool.ids(INCOMING)) == sorted([lost.id, torn.id])
    restored = (tmp_path / INCOMING / lost.id / "message.eml").read_bytes()
    assert restored == f"Received: x\r\nSubject: {lost.id}\r\n\r\nbody\r\n".encode()
    assert (tmp_path / INCOMING / torn.id / "message.eml").read_bytes().endswith(b"body\r\n")
    assert list((tmp_path / "journal").iterdir()) == []


async def test_a_live_journal_is_not_replayed_by_another_process(tmp_path: Path) -> None:
    owner = Spool(tmp_path)
    queued = item()
    await owner.enqueue(queued, b"x\r\n")
    await asyncio.gather(*owner.acceptance.writing)
    shutil.rmtree(tmp_path / INCOMING / queued.id)
    assert Spool(tmp_path).replay_orphaned_journals() == 0  # the owner still holds its lock
    crash(owner)
    assert Spool(tmp_path).replay_orphaned_journals() == 1


async def test_finished_messages_are_tombstoned_then_swept_once_no_journal_can_bring_them_back(
    tmp_path: Path,
) -> None:
    other = Spool(tmp_path)  # an SMTP worker: journals, never sweeps
    runner_side = Spool(tmp_path, sweeper=True)
    older, finished = item(), item()
    await other.enqueue(older, b"x\r\n")  # other's journal now holds a record, older than what follows
    await runner_side.enqueue(finished, b"y\r\n")
    await asyncio.gather(*runner_side.acceptance.writing, *other.acceptance.writing)
    runner_side.finish(runner_side.claim(INCOMING, finished.id))

    runner_side.checkpoint()
    assert (tmp_path / "done" / finished.id).exists()  # another process's older journal still lives
    await other.close()  # its journal is retired
    runner_side.checkpoint()
    assert (tmp_path / "done" / finished.id).exists()  # retired less than the clock margin ago
    later = time.time_ns() + 2 * CLOCK_MARGIN_NS
    with mock.patch("time.time_ns", return_value=later):  # not a mock of the system under test: the clock
        runner_side.checkpoint()
    assert not (tmp_path / "done" / finished.id).exists()
    assert list((tmp_path / "journal").iterdir()) == []


async def test_smtp_workers_never_sweep(tmp_path: Path) -> None:
    worker = Spool(tmp_path)
    (tmp_path / "done" / "OLD").mkdir()
    worker.checkpoint()
    assert (tmp_path / "done" / "OLD").exists()
    with mock.patch("time.time_ns", return_value=time.time_ns() + 2 * CLOCK_MARGIN_NS):
        Spool(tmp_path, sweeper=True).checkpoint()
    assert not (tmp_path / "done" / "OLD").exists()


async def test_a_failed_append_never_hides_later_messages_from_a_replay(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    await spool.enqueue(item(), b"first\r\n")
    real_writev = os.writev
    calls = {"n": 0}

    def disk_full_once(fd: int, buffers: list[memoryview]) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            real_writev(fd, [buffers[0][:10]])  # a torn record reaches the file ...
            raise OSError(28, "No space left on device")  # ... then the disk is full
        return real_writev(fd, buffers)

    with mock.patch("os.writev", disk_full_once):  # the OS is what fails here, so it is what is scripted
        with pytest.raises(OSError):
            await spool.enqueue(item(), b"refused with 451\r\n")
        later = item()
        await spool.enqueue(later, b"acknowledged after the failure\r\n")
    crash(spool)  # before any folder was written or any checkpoint ran
    shutil.rmtree(tmp_path / INCOMING)
    (tmp_path / INCOMING).mkdir()

    Spool(tmp_path).recover()

    assert (tmp_path / INCOMING / later.id / "message.eml").read_bytes() == b"acknowledged after the failure\r\n"


async def test_a_folder_that_cannot_be_written_yet_is_retried_until_it_can(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ready: list[str] = []
    spool = Spool(tmp_path, on_ready=ready.append)
    (tmp_path / INCOMING).rmdir()
    (tmp_path / INCOMING).write_text("in the way")  # the folder cannot be renamed into place
    queued = item()
    await spool.enqueue(queued, b"durable in the journal\r\n")  # acknowledged all the same
    while "cannot write" not in caplog.text:  # the first attempt to write the folder has failed
        await asyncio.sleep(0.01)
    assert ready == []
    (tmp_path / INCOMING).unlink()
    (tmp_path / INCOMING).mkdir()
    await spool.close()  # waits for the background write, which retries after a second
    assert ready == [queued.id]
    assert (tmp_path / INCOMING / queued.id / "message.eml").read_bytes() == b"durable in the journal\r\n"


async def test_a_crash_between_a_move_and_the_removal_keeps_the_newer_copy(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queued = item()
    await spool.enqueue(queued, b"x\r\n")
    await spool.close()
    old = tmp_path / INCOMING / queued.id
    new = tmp_path / DEFERRED / queued.id
    shutil.copytree(old, new)  # what a crash after the new copy and before the removal leaves
    later = time.time() + 5
    os.utime(new / "meta.json", (later, later))
    (tmp_path / DEFERRED / f".{queued.id}.moving").mkdir()  # and a move that never got renamed into place
    Spool(tmp_path).recover()
    assert spool.ids(INCOMING) == [] and spool.ids(DEFERRED) == [queued.id]
    assert not (tmp_path / DEFERRED / f".{queued.id}.moving").exists()
