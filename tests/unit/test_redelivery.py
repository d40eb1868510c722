"""A delivery repeated after a power cut: a name that survived without its data proves nothing.

Maildir and folder-archive file names are derived from the queue id, so a
retry finds the copy an earlier attempt left. After a power cut that copy's
name can be durable while its data never reached the disk (an empty file);
the retry must replace it, not take it as delivered. The power-loss
scenario in tests/powerloss lost mail this way with two SMTP workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sesmail_gateway import fsutil
from sesmail_gateway.archive.local import FolderArchiver
from sesmail_gateway.deliver.maildir import MaildirDeliverer
from sesmail_gateway.fsutil import PendingSyncs, link_or_copy
from sesmail_gateway.message import Delivery, QueueItem, StoredMessage

BODY = b"From: a@example.test\r\nSubject: once\r\n\r\nbody\r\n"


def stored(tmp_path: Path) -> StoredMessage:
    path = tmp_path / "spool" / "message.eml"
    path.parent.mkdir()
    path.write_bytes(BODY)
    return StoredMessage(path=path, size=len(BODY))


def test_an_existing_link_to_the_same_file_is_kept(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(BODY)
    dst = tmp_path / "dst"
    os.link(src, dst)
    before = dst.stat().st_ino
    link_or_copy(src, dst, sync=True)
    assert dst.stat().st_ino == before and dst.read_bytes() == BODY


def test_an_existing_empty_file_of_that_name_is_replaced(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(BODY)
    dst = tmp_path / "dst"
    dst.write_bytes(b"")  # the name survived the cut, the data did not
    link_or_copy(src, dst, sync=False)
    assert dst.read_bytes() == BODY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # nothing staged left behind


def test_maildir_redelivery_replaces_a_copy_left_empty_by_a_power_cut(tmp_path: Path) -> None:
    message = stored(tmp_path)
    item = QueueItem(id="0000000000001000010001", sender="a@example.test", recipients=[],
                     created=1_700_000_000.0)
    delivery = Delivery(action="maildir", target="mail", recipients=["r@example.test"])
    deliverer = MaildirDeliverer(tmp_path, syncs=PendingSyncs())
    deliverer.deliver(item, delivery, message)
    [copy] = (tmp_path / "mail" / "new").iterdir()
    # The power cut: the spool folder comes back from the journal (a new file), the Maildir name empty.
    copy.unlink()
    copy.write_bytes(b"")
    message.path.unlink()
    message.path.write_bytes(BODY)
    delivery.attempts = 1
    deliverer.deliver(item, delivery, message)
    assert [p.read_bytes() for p in (tmp_path / "mail" / "new").iterdir()] == [BODY]


def test_archive_rewrite_replaces_a_copy_left_empty_by_a_power_cut(tmp_path: Path) -> None:
    message = stored(tmp_path)
    item = QueueItem(id="0000000000001000010002", sender="a@example.test", recipients=[],
                     created=1_700_000_000.0)
    archiver = FolderArchiver(tmp_path / "archive", syncs=PendingSyncs())
    path = Path(archiver.archive(item, message))
    path.unlink()
    path.write_bytes(b"")
    message.path.unlink()
    message.path.write_bytes(BODY)
    assert Path(archiver.archive(item, message)).read_bytes() == BODY


def test_an_archive_copy_from_memory_replaces_one_left_empty_by_a_power_cut(tmp_path: Path) -> None:
    item = QueueItem(id="0000000000001000010003", sender="a@example.test", recipients=[], created=1_700_000_000.0)
    archiver = FolderArchiver(tmp_path / "archive", syncs=PendingSyncs())
    path = Path(archiver.archive(item, StoredMessage.of(BODY)))
    assert path.read_bytes() == BODY
    path.write_bytes(b"")
    assert Path(archiver.archive(item, StoredMessage.of(BODY))).read_bytes() == BODY


def _fsynced_files(syncs: PendingSyncs, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files the next flush fsyncs (the real fsyncs run; their paths are recorded)."""
    done: list[Path] = []
    real = fsutil.fsync_file

    def recording(path: Path, *args: Any, **kwargs: Any) -> None:
        done.append(path)
        real(path, *args, **kwargs)

    monkeypatch.setattr(fsutil, "fsync_file", recording)
    syncs.flush()
    return done


def test_a_maildir_link_to_an_archive_file_awaiting_its_fsync_is_fsynced_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Archive file and Maildir copy are one file: the archive's fsync, after the link, covers both names'
    data; each name is made durable by its own folder's fsync."""
    syncs = PendingSyncs()
    item = QueueItem(id="0000000000001000010004", sender="a@example.test", recipients=[], created=1_700_000_000.0)
    archived = Path(FolderArchiver(tmp_path / "archive", syncs=syncs).archive(item, StoredMessage.of(BODY)))
    delivery = Delivery(action="maildir", target="mail", recipients=["r@example.test"])
    MaildirDeliverer(tmp_path, syncs=syncs).deliver(item, delivery, StoredMessage.at(archived))
    [copy] = (tmp_path / "mail" / "new").iterdir()
    assert copy.stat().st_ino == archived.stat().st_ino
    assert _fsynced_files(syncs, monkeypatch) == [archived]


@pytest.mark.parametrize("source", ["flushed", "bytes"])
def test_a_maildir_copy_is_fsynced_itself_when_no_fsync_of_its_source_is_coming(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    syncs = PendingSyncs()
    item = QueueItem(id="0000000000001000010005", sender="a@example.test", recipients=[], created=1_700_000_000.0)
    archived = Path(FolderArchiver(tmp_path / "archive", syncs=syncs).archive(item, StoredMessage.of(BODY)))
    syncs.flush()  # the archive file is durable already: a later link changes its link count, unsynced
    message = StoredMessage.at(archived) if source == "flushed" else StoredMessage.of(BODY)
    delivery = Delivery(action="maildir", target="mail", recipients=["r@example.test"])
    MaildirDeliverer(tmp_path, syncs=syncs).deliver(item, delivery, message)
    [copy] = (tmp_path / "mail" / "new").iterdir()
    assert _fsynced_files(syncs, monkeypatch) == [copy]
