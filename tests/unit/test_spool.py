"""The durable spool: enqueue, group commit, claim, state moves, recovery."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sesmail_gateway.message import ACTIVE, DEFERRED, INCOMING, QueueItem, RecipientRoute
from sesmail_gateway.spool import Spool, SpoolError, new_queue_id


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
    spool = Spool(tmp_path)
    queued = item()
    await spool.enqueue(queued, b"Received: x\r\n", b"Subject: s\r\n\r\nbody\r\n")
    folder = tmp_path / INCOMING / queued.id
    assert (folder / "message.eml").read_bytes() == b"Received: x\r\nSubject: s\r\n\r\nbody\r\n"
    assert json.loads((folder / "meta.json").read_bytes())["sender"] == "a@sender.test"
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_concurrent_enqueues_share_group_commits(tmp_path: Path) -> None:
    batches: list[int] = []
    spool = Spool(tmp_path, on_commit=lambda seconds, size: batches.append(size))
    items = [item() for _ in range(50)]
    await asyncio.gather(*(spool.enqueue(i, b"x\r\n") for i in items))
    assert sorted(spool.ids(INCOMING)) == sorted(i.id for i in items)
    assert sum(batches) == 50
    # Fifty concurrent sessions must not cost fifty flushes.
    assert len(batches) < 50


async def test_a_failed_commit_raises_and_leaves_nothing_behind(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queued = item()
    (tmp_path / INCOMING).rmdir()
    (tmp_path / INCOMING).write_text("not a folder")
    with pytest.raises(OSError):
        await spool.enqueue(queued, b"x\r\n")
    assert list((tmp_path / "tmp").iterdir()) == []


async def test_claim_move_save_and_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    queued = item()
    await spool.enqueue(queued, b"x\r\n")
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
