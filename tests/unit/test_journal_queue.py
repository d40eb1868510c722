"""The journal is the queue: messages delivered from their journal records, folders only for what must outlive them.

A real spool and runner in a temp folder, wired as the daemon wires them
(``on_accepted`` → the runner, ``on_sealed`` → the segment tracker), with the
real Maildir deliverer and folder archive, or scripted targets.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest

from sesmail_gateway import journal
from sesmail_gateway.archive.local import FolderArchiver
from sesmail_gateway.config import DeliveryConfig
from sesmail_gateway.deliver.maildir import MaildirDeliverer
from sesmail_gateway.errors import TemporaryFailure
from sesmail_gateway.message import DEFERRED, INCOMING, REJECTED, Delivery, QueueItem, StoredMessage
from sesmail_gateway.metrics import Metrics
from sesmail_gateway.runner import Runner, journaled
from sesmail_gateway.segments import Segments
from sesmail_gateway.spool import Spool, run_checkpoints
from tests.unit.test_runner import ScriptedTarget, make_item, until, where

BODY = b"Subject: t\r\n\r\nbody\r\n"


def journals(spool: Spool) -> list[str]:
    return [p.name for p in journal.journal_files(spool.root / "journal")]


def folders(spool: Spool, state: str) -> list[str]:
    return spool.ids(state)


async def wired(tmp_path: Path, deliverers: dict[str, object], *, concurrency: int = 4,
                archive: FolderArchiver | None = None, checkpoints: bool = True, hang_timeout: float = 900.0) -> tuple[Spool, Runner, Callable[[], object]]:
    spool = Spool(tmp_path / "spool", sweeper=True)
    runner = Runner(
        spool=spool, archiver=archive or FolderArchiver(tmp_path / "archive", spool.syncs),
        deliverers=deliverers,  # type: ignore[arg-type]
        config=DeliveryConfig(concurrency=concurrency, max_age=3600.0, backoff_base=0.05, backoff_max=0.1,
                              hang_timeout=hang_timeout),
        metrics=Metrics(), poll_seconds=0.05,
    )
    spool.on_ready = runner.notify
    spool.on_accepted = runner.accept
    spool.on_sealed = spool.segments.sealed
    await runner.start()
    task = asyncio.create_task(run_checkpoints(spool, 0.05)) if checkpoints else None

    async def stop() -> None:
        await runner.stop()
        if task is not None:
            task.cancel()
        await spool.close()

    return spool, runner, stop


async def test_a_message_is_delivered_from_its_journal_record_and_never_gets_a_folder(tmp_path: Path) -> None:
    target = ScriptedTarget()
    spool, runner, stop = await wired(tmp_path, {"maildir": target})
    with mock.patch.object(spool, "materialize", wraps=spool.materialize) as materialize, \
            mock.patch.object(spool.folders, "write_tmp", wraps=spool.folders.write_tmp) as write_folders:
        items = [make_item("mail") for _ in range(5)]
        for item in items:
            await spool.enqueue(item, BODY)
        await until(lambda: len(target.calls) == 5)
        await until(lambda: not journals(spool))  # sealed, delivered, durable: the segment is deleted
    await stop()
    assert sorted(c[0] for c in target.calls) == sorted(i.id for i in items)
    materialize.assert_not_called()
    write_folders.assert_not_called()
    for state in ("incoming", "deferred", "done", "tmp"):
        assert not list((spool.root / state).iterdir()), state
    # The archive holds the bytes the runner had in memory.
    [archived] = list((tmp_path / "archive").rglob(f"{items[0].id}.eml"))
    assert archived.read_bytes() == BODY


async def test_a_failed_delivery_outlives_the_journal_in_a_durable_folder(tmp_path: Path) -> None:
    target = ScriptedTarget(TemporaryFailure("try later"))
    spool, runner, stop = await wired(tmp_path, {"maildir": target})
    item = make_item("mail")
    with mock.patch.object(spool, "materialize", wraps=spool.materialize) as materialize:
        await spool.enqueue(item, BODY)
        await until(lambda: len(target.calls) == 2, timeout=10)  # deferred, then tried again from its folder
        await until(lambda: not journals(spool))
    await stop()
    materialize.assert_called_once()
    assert where(spool, item.id) is None  # delivered the second time, retired


async def test_a_segment_stays_while_a_delivery_is_not_durable(tmp_path: Path) -> None:
    spool, runner, stop = await wired(tmp_path, {}, checkpoints=False)
    runner.deliverers = {"maildir": MaildirDeliverer(tmp_path, spool.syncs)}  # type: ignore[assignment]
    item = make_item("mail")
    await spool.enqueue(item, BODY)
    await until(lambda: list((tmp_path / "mail" / "new").glob("*")))
    spool.syncs.failed = OSError(5, "Input/output error")  # the disk failed an fsync: sticky
    with pytest.raises(OSError):
        await asyncio.to_thread(spool.checkpoint)
    assert journals(spool), "a segment was deleted although what its delivery wrote is not durable"
    spool.syncs.failed = None
    await asyncio.to_thread(spool.checkpoint)
    assert not journals(spool)
    await stop()


async def test_messages_the_runner_cannot_reach_in_time_get_folders(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journaled, "BACKLOG_SECONDS", 0.0)
    gate = threading.Event()
    calls: list[str] = []

    class Slow:
        def deliver(self, item: QueueItem, delivery: Delivery, message: StoredMessage) -> None:
            calls.append(item.id)
            assert gate.wait(10)

    spool, runner, stop = await wired(tmp_path, {"maildir": Slow()}, concurrency=1)
    items = [make_item("mail") for _ in range(4)]
    for item in items:
        await spool.enqueue(item, BODY)
    await until(lambda: len(calls) == 1)
    # The segment is sealed at the next checkpoint; the three not tried yet are written to incoming/.
    await until(lambda: len(folders(spool, INCOMING)) == 3, timeout=10)
    assert set(folders(spool, INCOMING)) == {i.id for i in items} - {calls[0]}
    gate.set()
    await until(lambda: len(calls) == 4, timeout=10)
    await until(lambda: not journals(spool) and not folders(spool, INCOMING), timeout=10)
    await stop()
    assert sorted(calls) == sorted(i.id for i in items)  # each once


async def test_a_message_refused_at_data_is_kept_in_its_folder(tmp_path: Path) -> None:
    target = ScriptedTarget()
    spool, runner, stop = await wired(tmp_path, {"maildir": target})
    item = make_item("mail")
    item.state = REJECTED
    await spool.enqueue(item, BODY)
    await until(lambda: folders(spool, REJECTED) == [item.id])
    await until(lambda: not journals(spool))
    await stop()
    assert target.calls == []
    assert (spool.root / REJECTED / item.id / "message.eml").read_bytes() == BODY


async def test_start_up_delivers_what_the_journals_of_a_crashed_run_hold_without_doubling(tmp_path: Path) -> None:
    # The run that crashed: the runner delivered the first message into the Maildir, then the process died
    # before the checkpoint; the other two were journaled (and acknowledged) and never tried.
    spool = Spool(tmp_path / "spool", sweeper=True)
    accepted: list[object] = []
    spool.on_accepted = accepted.append
    spool.on_sealed = spool.segments.sealed
    items = [make_item("mail") for _ in range(3)]
    for item in items:
        await spool.enqueue(item, BODY)
    first = items[0]
    MaildirDeliverer(tmp_path).deliver(first, first.deliveries[0], StoredMessage.of(BODY))
    assert spool.acceptance.journal is not None
    spool.acceptance.journal.seal()  # the process is gone: its lock with it

    spool2, runner, stop = await wired(tmp_path, {"maildir": MaildirDeliverer(tmp_path)})
    await until(lambda: len(list((tmp_path / "mail" / "new").iterdir())) == 3)
    await until(lambda: not journals(spool2))
    await stop()
    copies = sorted(p.read_bytes() for p in (tmp_path / "mail" / "new").iterdir())
    assert copies == [BODY] * 3  # the first one replaced, not doubled


async def test_a_deferred_record_keeps_what_was_delivered_before(tmp_path: Path) -> None:
    ok, failing = ScriptedTarget(), ScriptedTarget(TemporaryFailure("down"), TemporaryFailure("down"))
    spool, runner, stop = await wired(tmp_path, {"maildir": ok, "forward-to-gmail": failing})
    item = make_item("mail")
    item.deliveries.append(Delivery(action="forward-to-gmail", target="a@gmail.test", recipients=["x@example.test"]))
    await spool.enqueue(item, BODY)
    await until(lambda: where(spool, item.id) == DEFERRED)
    meta = json.loads((spool.root / DEFERRED / item.id / "meta.json").read_bytes())
    statuses = {d["action"]: d["status"] for d in meta["deliveries"]}
    assert statuses == {"maildir": "delivered", "forward-to-gmail": "pending"}
    await until(lambda: len(failing.calls) == 3, timeout=10)
    await stop()
    assert len(ok.calls) == 1  # never again


def test_a_segment_goes_only_when_sealed_whole_and_settled(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    folder.mkdir()
    segments = Segments(folder)
    path = folder / "1-1.wal"
    path.write_bytes(b"records")
    segments.accepted(path.name, "a")
    segments.sealed(path.name, records=2)  # news of the seal overtook the second record
    segments.delivered("a")
    assert segments.retire(segments.take_delivered()) == 0 and path.exists()
    segments.accepted(path.name, "b")
    segments.settled("b")
    assert segments.retire(segments.take_delivered()) == 1 and not path.exists()

    broken = folder / "2-1.wal"
    broken.write_bytes(b"records")
    segments.accepted(broken.name, "c")
    segments.sealed(broken.name, broken=True, records=1)
    segments.settled("c")
    assert segments.retire([]) == 0 and broken.exists()  # an fdatasync failed in it: the next start-up replays it


async def crash(spool: Spool, runner: Runner) -> None:
    """The process dies: no last checkpoint, its locks released."""
    for task in runner._tasks:
        task.cancel()
    await asyncio.gather(*runner._tasks, return_exceptions=True)
    runner._pool.shutdown(wait=True)
    runner.delivered_log.close()
    if spool.acceptance.journal is not None:
        spool.acceptance.journal.seal()


@pytest.mark.parametrize("recorded", [True, False])
async def test_a_gmail_import_recorded_before_a_crash_is_not_made_again(tmp_path: Path, recorded: bool) -> None:
    gmail = ScriptedTarget()
    spool, runner, _ = await wired(tmp_path, {"maildir": ScriptedTarget(), "forward-to-gmail": gmail},
                                   checkpoints=False)
    item = make_item("mail")
    item.deliveries.append(Delivery(action="forward-to-gmail", target="a@gmail.test", recipients=["x@example.test"]))
    await spool.enqueue(item, BODY)
    await until(lambda: len(gmail.calls) == 1)
    await until(lambda: spool.segments.take_delivered() and True)  # delivered: it waits for the checkpoint
    if recorded:
        spool.syncs.flush()  # the checkpoint made the record durable; the crash came before the segment went
    else:
        shutil.rmtree(tmp_path / "spool" / "delivered")  # the crash came before the record was durable
    await crash(spool, runner)

    gmail_again, maildir_again = ScriptedTarget(), ScriptedTarget()
    spool2, runner2, stop = await wired(tmp_path, {"maildir": maildir_again, "forward-to-gmail": gmail_again})
    await until(lambda: len(maildir_again.calls) == 1)  # idempotent by its name: simply made again
    await until(lambda: not journals(spool2))
    await stop()
    assert len(gmail_again.calls) == (0 if recorded else 1)
    samples = {s.labels["outcome"]: s.value for s in runner2.metrics.replayed.collect()[0].samples
               if s.name.endswith("_total")}
    assert samples == ({"skipped": 1.0, "repeated": 0.0} if recorded else {"skipped": 0.0, "repeated": 1.0})


async def journaled_by_a_process_that_is_gone(tmp_path: Path) -> QueueItem:
    """A message journaled (and acknowledged) by an SMTP process that told no runner, then went away."""
    other = Spool(tmp_path / "spool")
    other.on_accepted = lambda accepted: None
    other.on_sealed = lambda name, broken, records: None
    item = make_item("mail")
    await other.enqueue(item, BODY)
    assert other.acceptance.journal is not None
    other.acceptance.journal.seal()  # gone: its lock with it
    return item


async def test_a_journal_left_by_a_worker_of_an_earlier_daemon_is_adopted_once_idle(tmp_path: Path) -> None:
    target = ScriptedTarget()
    spool, runner, stop = await wired(tmp_path, {"maildir": target})
    # A worker of the daemon before this one drained its last session after this one had started.
    item = await journaled_by_a_process_that_is_gone(tmp_path)
    [path] = [tmp_path / "spool" / "journal" / name for name in journals(spool)]
    assert await runner.adopt(idle_for=60.0) == 0  # written just now: its writer may still report it
    os.utime(path, (time.time() - 120, time.time() - 120))
    assert await runner.adopt(idle_for=60.0) == 1
    await until(lambda: target.calls == [(item.id, "mail")])
    await until(lambda: not journals(spool))
    assert await runner.adopt(idle_for=60.0) == 0
    await stop()


async def test_the_journal_of_a_dead_smtp_worker_is_adopted_by_its_pid(tmp_path: Path) -> None:
    target = ScriptedTarget()
    spool, runner, stop = await wired(tmp_path, {"maildir": target})
    # The worker journaled and acknowledged a message, and died before it could tell the runner.
    item = await journaled_by_a_process_that_is_gone(tmp_path)
    assert await runner.adopt(pid=os.getpid() + 1) == 0  # another worker's journals only
    assert await runner.adopt(pid=os.getpid()) == 1
    await until(lambda: target.calls == [(item.id, "mail")])
    await until(lambda: not journals(spool))
    await stop()


async def test_a_delivery_that_hangs_is_reported(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()

    class Hanging:
        def deliver(self, item: QueueItem, delivery: Delivery, message: StoredMessage) -> None:
            assert gate.wait(10)

    spool, runner, stop = await wired(tmp_path, {"maildir": Hanging()}, hang_timeout=0.2)
    item = make_item("mail")
    await spool.enqueue(item, BODY)
    await until(lambda: item.id in runner.hung())
    assert "taken as hung" in caplog.text
    gate.set()
    await until(lambda: not runner.hung())
    await stop()
