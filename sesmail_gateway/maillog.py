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


def event(name: str, queue_id: str | None = None, **fields: Any) -> None:
    """Log one mail event as a single JSON line."""
    if name not in EVENTS:
        raise ValueError(f"unknown mail event {name!r}")
    record: dict[str, Any] = {"ts": round(time.time(), 3), "event": name}
    if queue_id:
        record["queue_id"] = queue_id
    record.update({k: v for k, v in fields.items() if v is not None})
    _log.info(json.dumps(record, separators=(",", ":"), default=str, ensure_ascii=False))


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
            view = memoryview((self.format(record) + "\n").encode("utf-8", "backslashreplace"))
            while view:
                view = view[os.write(self.fd, view):]
        except Exception:
            self.handleError(record)


def configure(level: int = logging.INFO, *, daemon: bool = False) -> None:
    """Send every log line to stderr as one JSON object (in the daemon straight to file descriptor 2)."""
    handler: logging.Handler
    if daemon:
        sys.stderr.flush()
        handler = _LineHandler(sys.stderr.fileno())
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
