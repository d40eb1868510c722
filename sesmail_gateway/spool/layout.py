"""Where the spool keeps what: folder names, queue ids, and the metadata as written to disk.

    spool/journal/*.wal        acceptance journals, one segment per SMTP process and second
    spool/tmp/<id>/            a folder being written; never counted
    spool/incoming/<id>/       waiting for the runner (written when a message must outlive its segment)
    spool/active/<id>/         left by versions that claimed by renaming; resumed at start-up
    spool/deferred|held|dead|rejected/<id>/
    spool/done/<id>/           retired from a folder; kept until no journal can bring it back
    spool/corrupt/<id>/        unreadable, kept for a person
    spool/delivered/*.log      remote deliveries made (delivered.py)

Each message folder holds two files: the message and its metadata (a
``QueueItem`` as JSON, versioned by ``QueueItem``'s schema).
"""

from __future__ import annotations

import itertools
import json
import os
import time

from sesmail_gateway.message import QueueItem

MESSAGE = "message.eml"
META = "meta.json"
TMP = "tmp"
DONE = "done"
CORRUPT = "corrupt"
JOURNAL = "journal"


class SpoolError(Exception):
    """A queue operation that cannot be done (unknown id, wrong state)."""


_counter = itertools.count()


def new_queue_id() -> str:
    """Unique across processes and sortable by time: microseconds, pid, counter (hex)."""
    micros = time.time_ns() // 1000
    return f"{micros:013X}{os.getpid() & 0xFFFFF:05X}{next(_counter) & 0xFFFF:04X}"


def encode(item: QueueItem) -> bytes:
    """The metadata file's content (and a journal record's metadata)."""
    return json.dumps(item.to_dict(), separators=(",", ":"), sort_keys=True).encode()
