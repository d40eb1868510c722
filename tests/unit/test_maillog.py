"""The mail-event log: one JSON line per event, written straight to the daemon's stderr when nothing else listens."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sesmail_gateway import maillog

MAIL = logging.getLogger("sesmail.mail")


@pytest.fixture
def daemon_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The daemon's logging set up on a file standing in for its standard error; the test's own put back after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging._srcfile)  # type: ignore[attr-defined]
    path = tmp_path / "stderr"
    with path.open("w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        maillog.configure(daemon=True)
        yield path
    root.handlers[:], level, logging._srcfile = saved  # type: ignore[attr-defined]
    root.setLevel(level)
    monkeypatch.setattr(maillog, "_direct", None)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_an_event_is_one_json_line_written_without_a_log_record(daemon_log: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def no_record(*args: object, **kwargs: object) -> None:
        raise AssertionError("the event went through a LogRecord")

    monkeypatch.setattr(MAIL, "info", no_record)
    # pytest's own capture handler joins the root's for each test phase: leave the daemon's alone.
    monkeypatch.setattr(logging.getLogger(), "handlers", [maillog._direct])
    maillog.event("queued", "Q1", sender="a@example.org", recipients=["b@example.test"], scan=None,
                  auth={"spf": "pass"})
    maillog.event("delivered", "Q1", action="maildir", target="mail")
    first, second = lines(daemon_log)
    assert {k: v for k, v in first.items() if k != "ts"} == {
        "event": "queued", "queue_id": "Q1", "sender": "a@example.org", "recipients": ["b@example.test"],
        "auth": {"spf": "pass"}}
    assert second["event"] == "delivered" and second["target"] == "mail"


def test_with_another_handler_or_a_filter_events_go_through_logging(
        daemon_log: Path, caplog: pytest.LogCaptureFixture) -> None:
    """What listens besides the daemon's handler (a test's capture, an operator's filter) gets every event."""
    with caplog.at_level(logging.INFO, logger="sesmail.mail"):
        maillog.event("received", "Q2", size=10)
    assert [json.loads(r.getMessage())["queue_id"] for r in caplog.records] == ["Q2"]
    assert [line["queue_id"] for line in lines(daemon_log)] == ["Q2"]  # the daemon's line too, once

    dropped = logging.Filter("nothing")  # a filter that passes no record of sesmail.mail
    MAIL.addFilter(dropped)
    try:
        maillog.event("received", "Q3", size=10)
    finally:
        MAIL.removeFilter(dropped)
    assert [line["queue_id"] for line in lines(daemon_log)] == ["Q2"]

    MAIL.setLevel(logging.WARNING)
    try:
        maillog.event("received", "Q4", size=10)
    finally:
        MAIL.setLevel(logging.NOTSET)
    maillog.event("received", "Q5", size=10)
    assert [line["queue_id"] for line in lines(daemon_log)] == ["Q2", "Q5"]


def test_a_failed_write_is_handled_like_logging_handles_one_and_not_raised(
        daemon_log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Standard error gone (a closed pipe): the event that could not be written does not fail what logged it."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [maillog._direct])
    handled: list[logging.LogRecord] = []
    assert maillog._direct is not None
    monkeypatch.setattr(maillog._direct, "handleError", handled.append)
    monkeypatch.setattr(maillog._direct, "fd", 987654)  # a descriptor that is not open: EBADF
    maillog.event("delivered", "Q6", action="maildir")
    assert [json.loads(r.getMessage())["queue_id"] for r in handled] == ["Q6"]
