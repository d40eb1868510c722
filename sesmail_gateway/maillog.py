"""The mail-event log: one JSON line per message decision, keyed by queue id.

The vocabulary is fixed: received, rejected, queued, archived, delivered,
deferred, held, dead, released, deleted, retried. Lines go to the ``sesmail.mail``
logger, which the daemon writes to standard error (the journal under
systemd). Secrets never go here: only envelope, client and verdict fields.
"""

from __future__ import annotations

import json
import logging
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


def configure(level: int = logging.INFO) -> None:
    """Send every log line to stderr as one JSON object."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageOnly())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Our lines carry none of these; skipping them saves syscalls on every record.
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    # aiosmtpd logs every command at INFO; keep its warnings only.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
