"""The mail-event log: one JSON line per message decision, keyed by queue id.

The vocabulary is fixed: received, rejected, queued, archived, delivered,
deferred, held, dead, released, deleted, retried. Lines go to the ``sesmail.mail``
logger, which the daemon writes to standard error (the journal under
systemd). Secrets never go here: only envelope, client and verdict fields.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

EVENTS = frozenset(
    {"received", "rejected", "queued", "archived", "delivered", "deferred", "held", "dead", "released", "deleted", "retried", "dsn"}
)

_log = logging.getLogger("sesmail.mail")

# The daemon's handler: a mail event it alone would receive is written to it without a LogRecord (the
# record's construction and dispatch cost twice the line itself, on every message, several times).
_direct: _LineHandler | None = None


def event(name: str, queue_id: str | None = None, **fields: Any) -> None:
    """Log one mail event as a single JSON line."""
    if name not in EVENTS:
        raise ValueError(f"unknown mail event {name!r}")
    record: dict[str, Any] = {"ts": round(time.time(), 3), "event": name}
    if queue_id:
        record["queue_id"] = queue_id
    record.update({k: v for k, v in fields.items() if v is not None})
    line = json.dumps(record, separators=(",", ":"), default=str, ensure_ascii=False)
    direct = _direct
    if direct is not None and direct.takes_all(_log):
        direct.write_event(line)
    else:
        _log.info(line)


class _MessageOnly(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name == _log.name:
            return record.getMessage()
        line = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


class _LineHandler(logging.Handler):
    """Each record as one ``write(2)`` of a whole line to a file descriptor, without the handler lock.

    The kernel keeps one write whole, so lines from several threads never
    mix; skipping the lock spares the delivery threads a convoy on it (a
    thread that holds it while waiting for the GIL stalls every other).
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        view = memoryview((line + "\n").encode("utf-8", "backslashreplace"))
        while view:
            view = view[os.write(self.fd, view):]

    def write_event(self, line: str) -> None:
        """A mail event's line without a LogRecord; a failed write is handled as ``emit`` handles one
        (logging's ``handleError``), never raised into the delivery that logged it."""
        try:
            self.write_line(line)
        except Exception:
            self.handleError(logging.makeLogRecord({"name": _log.name, "msg": line}))

    def takes_all(self, logger: logging.Logger) -> bool:
        """Whether an INFO record of ``logger`` would reach this handler alone, formatted as its bare message:
        the logger and the root pass INFO, nothing filters, and this is the one handler on the way."""
        root = logging.root
        return (not logger.handlers and not logger.filters and logger.propagate and logger.isEnabledFor(logging.INFO)
                and root.handlers == [self] and not root.filters and not self.filters and self.level <= logging.INFO)


def configure(level: int = logging.INFO, *, daemon: bool = False) -> None:
    """Send every log line to stderr as one JSON object (in the daemon straight to file descriptor 2)."""
    handler: logging.Handler
    global _direct
    _direct = None
    if daemon:
        sys.stderr.flush()
        handler = _direct = _LineHandler(sys.stderr.fileno())
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageOnly())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Our lines carry none of these; skipping them saves syscalls on every record. Without _srcfile
    # logging does not walk the stack for the caller's file and line (the logging HOWTO's "Optimization").
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]
    # aiosmtpd logs every command at INFO; keep its warnings only.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
