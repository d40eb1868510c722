"""The power-loss filesystem keeps exactly what POSIX makes durable (see fusefs.py).

Every test works through a real FUSE mount with ordinary system calls,
cuts the power, and reads what is left from the rolled-back backing folder
and from a fresh mount.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

import pytest

from tests.powerloss.harness import PowerLossFS


def write(path: Path, data: bytes, *, sync: bool, append: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def after_cut(fs: PowerLossFS) -> Path:
    """Cut the power, boot again, and return the mount."""
    report = fs.power_cut()
    assert report["cut"] is True
    fs.mount()
    return fs.mountpoint


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_created_and_fsynced_file_is_gone_when_its_folder_was_not_fsynced(powerfs: PowerLossFS) -> None:
    write(powerfs.mountpoint / "a", b"data", sync=True)
    assert files(powerfs.mountpoint) == {"a": b"data"}
    assert files(after_cut(powerfs)) == {}


def test_created_file_survives_when_file_and_folder_are_fsynced(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    write(m / "a", b"data", sync=True)
    fsync_dir(m)
    assert files(after_cut(powerfs)) == {"a": b"data"}
    assert (powerfs.backing / "a").read_bytes() == b"data"


def test_durable_name_without_fsynced_data_comes_back_empty(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    write(m / "a", b"never synced", sync=False)
    fsync_dir(m)
    assert files(after_cut(powerfs)) == {"a": b""}


def test_unsynced_append_and_overwrite_are_undone(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    write(m / "log", b"first ", sync=True)
    write(m / "over", b"synced", sync=True)
    fsync_dir(m)
    write(m / "log", b"second", sync=False, append=True)
    fd = os.open(m / "over", os.O_WRONLY)
    os.pwrite(fd, b"XX", 2)
    os.ftruncate(fd, 4)
    os.close(fd)
    assert files(m) == {"log": b"first second", "over": b"syXX"}
    assert files(after_cut(powerfs)) == {"log": b"first ", "over": b"synced"}


def test_data_synced_later_is_kept_and_survives_two_cuts(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    write(m / "log", b"one", sync=True)
    fsync_dir(m)
    write(m / "log", b" two", sync=True, append=True)
    write(m / "log", b" three", sync=False, append=True)
    assert files(after_cut(powerfs)) == {"log": b"one two"}
    write(m / "log", b" four", sync=False, append=True)
    assert files(after_cut(powerfs)) == {"log": b"one two"}


def test_rename_is_whole_once_both_folders_are_fsynced(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    for name in ("src", "dst"):
        (m / name).mkdir()
    fsync_dir(m)
    write(m / "src" / "x", b"x", sync=True)
    fsync_dir(m / "src")
    os.rename(m / "src" / "x", m / "dst" / "x")
    fsync_dir(m / "dst")
    fsync_dir(m / "src")
    after = after_cut(powerfs)
    assert files(after / "src") == {}
    assert files(after / "dst") == {"x": b"x"}


def test_rename_with_only_the_destination_fsynced_leaves_both_names(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    (m / "src").mkdir()
    (m / "dst").mkdir()
    write(m / "src" / "x", b"x", sync=True)
    fsync_dir(m / "src")
    fsync_dir(m)
    os.rename(m / "src" / "x", m / "dst" / "x")
    fsync_dir(m / "dst")
    after = after_cut(powerfs)
    assert files(after / "src") == {"x": b"x"}
    assert files(after / "dst") == {"x": b"x"}


def test_rename_with_only_the_source_fsynced_loses_the_file(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    (m / "src").mkdir()
    (m / "dst").mkdir()
    write(m / "src" / "x", b"x", sync=True)
    fsync_dir(m / "src")
    fsync_dir(m)
    os.rename(m / "src" / "x", m / "dst" / "x")
    fsync_dir(m / "src")
    after = after_cut(powerfs)
    assert files(after / "src") == {}
    assert files(after / "dst") == {}


def test_folder_renamed_with_only_the_destination_fsynced_keeps_its_old_name(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    for name in ("incoming", "active"):
        (m / name).mkdir()
    (m / "incoming" / "id").mkdir()
    write(m / "incoming" / "id" / "message", b"mail", sync=True)
    fsync_dir(m / "incoming" / "id")
    fsync_dir(m / "incoming")
    fsync_dir(m)
    os.rename(m / "incoming" / "id", m / "active" / "id")
    fsync_dir(m / "active")
    after = after_cut(powerfs)
    assert files(after / "incoming" / "id") == {"message": b"mail"}
    assert list((after / "active").iterdir()) == []


def test_folder_renamed_with_only_the_source_fsynced_is_lost(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    for name in ("incoming", "active"):
        (m / name).mkdir()
    (m / "incoming" / "id").mkdir()
    write(m / "incoming" / "id" / "message", b"mail", sync=True)
    fsync_dir(m / "incoming" / "id")
    fsync_dir(m / "incoming")
    fsync_dir(m)
    os.rename(m / "incoming" / "id", m / "active" / "id")
    fsync_dir(m / "incoming")
    after = after_cut(powerfs)
    assert list((after / "incoming").iterdir()) == []
    assert list((after / "active").iterdir()) == []


def test_replace_by_rename_is_the_old_file_until_the_folder_is_fsynced(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    write(m / "meta", b"old", sync=True)
    fsync_dir(m)
    write(m / ".meta.tmp", b"new", sync=True)
    os.replace(m / ".meta.tmp", m / "meta")
    assert files(after_cut(powerfs)) == {"meta": b"old"}
    write(m / ".meta.tmp", b"new", sync=True)
    os.replace(m / ".meta.tmp", m / "meta")
    fsync_dir(m)
    assert files(after_cut(powerfs)) == {"meta": b"new"}


def test_hard_link_is_a_directory_entry(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    (m / "tmp").mkdir()
    (m / "new").mkdir()
    fsync_dir(m)
    write(m / "tmp" / "msg", b"mail", sync=True)
    fsync_dir(m / "tmp")
    os.link(m / "tmp" / "msg", m / "new" / "msg")
    assert files(after_cut(powerfs) / "new") == {}
    os.link(m / "tmp" / "msg", m / "new" / "msg")
    fsync_dir(m / "new")
    after = after_cut(powerfs)
    assert files(after / "new") == {"msg": b"mail"}
    assert os.stat(after / "new" / "msg").st_ino == os.stat(after / "tmp" / "msg").st_ino


def test_unlink_is_undone_until_the_folder_is_fsynced(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    write(m / "journal", b"records", sync=True)
    fsync_dir(m)
    write(m / "journal", b" unsynced", sync=False, append=True)
    os.unlink(m / "journal")
    assert files(after_cut(powerfs)) == {"journal": b"records"}
    os.unlink(m / "journal")
    fsync_dir(m)
    assert files(after_cut(powerfs)) == {}


def test_new_folder_needs_its_parent_fsynced_and_keeps_only_what_it_recorded(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    (m / "a").mkdir()
    write(m / "a" / "f", b"f", sync=True)
    fsync_dir(m / "a")
    assert not (after_cut(powerfs) / "a").exists()
    (m / "b").mkdir()
    write(m / "b" / "f", b"f", sync=True)
    fsync_dir(m)
    after = after_cut(powerfs)
    assert (after / "b").is_dir()
    assert files(after / "b") == {}


def test_rmdir_is_undone_until_the_parent_is_fsynced(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    (m / "d").mkdir()
    write(m / "d" / "f", b"kept", sync=True)
    fsync_dir(m / "d")
    fsync_dir(m)
    os.unlink(m / "d" / "f")
    os.rmdir(m / "d")
    assert files(after_cut(powerfs) / "d") == {"f": b"kept"}


def test_sync_and_syncfs_flush_nothing(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    write(m / "a", b"data", sync=False)
    os.sync()
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert libc.syncfs(fd) == 0, "syncfs returns success"
    finally:
        os.close(fd)
    assert files(after_cut(powerfs)) == {}


def test_untouched_files_survive_cuts_unchanged(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    (m / "deep" / "er").mkdir(parents=True)
    write(m / "deep" / "er" / "old", b"old", sync=True)
    fsync_dir(m / "deep" / "er")
    fsync_dir(m / "deep")
    fsync_dir(m)
    after_cut(powerfs)
    write(m / "other", b"x", sync=True)
    assert files(after_cut(powerfs) / "deep" / "er") == {"old": b"old"}


def test_fsync_fails_with_eio_when_told_and_the_failed_data_never_becomes_durable(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    (m / "journal").mkdir()
    fsync_dir(m)
    write(m / "journal" / "j", b"AAAA", sync=True)
    fsync_dir(m / "journal")
    powerfs.fail_fsync("journal/*", count=1)
    fd = os.open(m / "journal" / "j", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"BBBB")
        with pytest.raises(OSError) as failed:
            os.fsync(fd)
        assert failed.value.errno == errno.EIO
        os.write(fd, b"CCCC")
        os.fsync(fd)  # the next fsync succeeds, as on Linux, but the failed pages are gone
    finally:
        os.close(fd)
    write(m / "other", b"fine", sync=True)  # a path that does not match is not affected
    fsync_dir(m)
    assert powerfs.command("stats")["eio"] == 1
    after = after_cut(powerfs)
    assert (after / "journal" / "j").read_bytes() == b"AAAA\0\0\0\0CCCC"
    assert files(after) == {"other": b"fine"}


def test_fsync_failure_of_a_folder_keeps_its_old_entries(powerfs: PowerLossFS) -> None:
    m = powerfs.mountpoint
    powerfs.fail_fsync("", count=-1)  # the mount's root, always
    write(m / "a", b"a", sync=True)
    with pytest.raises(OSError) as failed:
        fsync_dir(m)
    assert failed.value.errno == errno.EIO
    assert files(after_cut(powerfs)) == {}
