"""Attempts under way, alone: one holder per message, the attempt log across a crash, hang detection."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from sesmail_gateway.runner.inflight import InFlight


def test_a_message_has_one_holder_at_a_time(tmp_path: Path) -> None:
    attempts = InFlight(tmp_path, hang_seconds=900.0)
    assert attempts.reserve("a")
    assert not attempts.reserve("a")
    assert attempts.reserve("b")  # other messages are not kept waiting
    got: list[bool] = []
    waiting = threading.Thread(target=lambda: got.append(attempts.reserve("a", wait=10)))
    waiting.start()
    attempts.unreserve("a")  # a waiter gets it once it is free
    waiting.join()
    assert got == [True]
    assert not attempts.reserve("a")


def test_an_attempt_frees_its_message_when_it_ends_even_by_an_exception(tmp_path: Path) -> None:
    attempts = InFlight(tmp_path, hang_seconds=900.0)
    attempts.interrupted()
    assert attempts.reserve("a")
    with pytest.raises(KeyError), attempts.attempt("a"):
        raise KeyError("a bug")
    assert attempts.reserve("a")
    assert InFlight(tmp_path, hang_seconds=900.0).interrupted() == []  # it ended: the next start-up does not count it


def test_the_next_start_up_learns_which_attempts_never_ended(tmp_path: Path) -> None:
    # A daemon that ends one attempt and dies in the middle of the next.
    dies = textwrap.dedent("""
        import os, sys
        from pathlib import Path
        from sesmail_gateway.runner.inflight import InFlight
        attempts = InFlight(Path(sys.argv[1]), hang_seconds=900.0)
        attempts.interrupted()
        for queue_id in ("done", "crashed"):
            attempts.reserve(queue_id)
            with attempts.attempt(queue_id):
                if queue_id == "crashed":
                    os._exit(9)
    """)
    assert subprocess.run([sys.executable, "-c", dies, str(tmp_path)], check=False).returncode == 9
    assert InFlight(tmp_path, hang_seconds=900.0).interrupted() == ["crashed"]
    assert InFlight(tmp_path, hang_seconds=900.0).interrupted() == []  # the log started afresh


def test_an_attempt_running_too_long_is_reported_and_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    attempts = InFlight(tmp_path, hang_seconds=900.0)
    attempts.reserve("a")
    with attempts.attempt("a"):
        assert attempts.hung() == {}  # 900 s: not yet
        attempts.hang_seconds = -1.0  # every attempt under way has run too long
        assert list(attempts.hung()) == ["a"]
        assert list(attempts.hung()) == ["a"]
        assert caplog.text.count("taken as hung") == 1
    assert attempts.hung() == {}
