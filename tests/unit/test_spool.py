"""The durable spool: enqueue, group commit, claim, state moves, recovery."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
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


async def test_without_syncfs_every_file_is_fsynced_before_enqueue_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsyncs are observed (os.fsync is wrapped, and still called): each file, the message's
    folder, and the state folder it is renamed into, all before enqueue returns."""
    synced: list[str] = []
    real_fsync = os.fsync

    def observed_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", observed_fsync)
    spool = Spool(tmp_path)
    spool.journaled = False  # as on a system without syncfs(2)
    synced.clear()
    queued = item()
    await spool.enqueue(queued, b"x\r\n")
    returned = list(synced)
    assert spool.ids(INCOMING) == [queued.id]  # at once: no background write
    assert list((tmp_path / "journal").iterdir()) == []
    root = tmp_path.resolve()
    tmp = root / "tmp" / queued.id
    assert {str(tmp / "message.eml"), str(tmp / "meta.json"), str(tmp), str(root / INCOMING)} <= set(returned)


async def test_claim_move_save_and_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queued = item()
    await spool.enqueue(queued, b"x\r\n")
    await spool.close()
    claimed = spool.claim(INCOMING, queued.id)
    assert claimed.state == ACTIVE
    with pytest.raises(SpoolError):
        spool.claim(INCOMING, queued.id)  # someone else got it first
    claimed.reason = "remote said 451"
    spool.save(claimed)
    spool.move(claimed, DEFERRED)
    again = spool.find(queued.id)
    assert (again.state, again.reason) == (DEFERRED, "remote said 451")
    spool.remove(again)
    with pytest.raises(SpoolError):
        spool.find(queued.id)


async def test_recover_resumes_active_and_drops_unacknowledged_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first, second = item(), item()
    await spool.enqueue(first, b"x\r\n")
    await spool.enqueue(second, b"y\r\n")
    await spool.close()
    spool.claim(INCOMING, first.id)  # a crash while delivering
    (tmp_path / "tmp" / "half-written").mkdir()  # a crash before the 250
    broken = tmp_path / DEFERRED / "BROKEN"
    broken.mkdir()
    (broken / "meta.json").write_text("{}")  # message file missing

    report = Spool(tmp_path).recover()

    assert (report.resumed, report.discarded_tmp, report.corrupt) == (1, 1, 1)
    assert sorted(spool.ids(INCOMING)) == sorted([first.id, second.id])
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
    for journal_file in [spool._journal, *spool._closed]:
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
    await asyncio.gather(*spool._writing)
    # What a crash before the next checkpoint can leave behind:
    shutil.rmtree(tmp_path / INCOMING / lost.id)
    (tmp_path / INCOMING / torn.id / "message.eml").write_bytes(b"Rece")
    spool.claim(INCOMING, delivered.id)
    spool._tombstone(spool.load(ACTIVE, delivered.id))  # delivered and retired
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
    await asyncio.gather(*owner._writing)
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
    await asyncio.gather(*runner_side._writing, *other._writing)
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
