"""The queue item: envelope, client, verdicts, routes and per-delivery state.

A queue item is stored as ``meta.json`` beside ``message.eml`` in the spool.
Deliveries group recipients by (action, target), so two recipients routed
to the same mailbox get one copy, and each group's state is recorded on its
own: a restart retries only what is still pending.
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

# Version of the queue record layout (meta.json, journal records). A reader
# takes what it knows and reads past what it does not: a record written by a
# newer version is delivered, never set aside as corrupt.
SCHEMA_VERSION = 2

PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"

# Queue states, one spool folder each.
INCOMING = "incoming"
ACTIVE = "active"
DEFERRED = "deferred"
HELD = "held"
DEAD = "dead"
REJECTED = "rejected"
STATES = (INCOMING, ACTIVE, DEFERRED, HELD, DEAD, REJECTED)


@dataclass(frozen=True)
class StoredMessage:
    """A message's bytes: a spool file that holds them, or the bytes themselves, and the size.

    A message accepted in this process is delivered from memory (``data``),
    straight from its journal record; one that outlived its journal segment
    lies in a spool file (``path``). Local targets (folder archive, Maildir)
    hard-link the file when there is one, else write the bytes; remote ones
    stream ``open()``. ``read()`` is for what must hold the whole message.
    """

    path: Path | None
    size: int
    data: bytes | None = None

    @classmethod
    def at(cls, path: Path) -> StoredMessage:
        return cls(path, path.stat().st_size)

    @classmethod
    def of(cls, data: bytes) -> StoredMessage:
        return cls(None, len(data), data)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def open(self) -> BinaryIO:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return self.path.open("rb")


@dataclass
class Client:
    ip: str = ""
    port: int = 0
    helo: str = ""
    reverse_name: str = ""
    tls: bool = False


@dataclass
class RecipientRoute:
    """A recipient as accepted at RCPT, with the rule chosen for it."""

    address: str
    pattern: str = ""
    level: str = ""
    actions: list[dict[str, str]] = field(default_factory=list)
    # The rule's scan settings when it has any: {"spam": ..., "allow_from": [...], "block_from": [...]}.
    scan: dict[str, Any] | None = None


@dataclass
class Delivery:
    """One (action, target) and the recipients it carries."""

    action: str
    target: str
    recipients: list[str]
    status: str = PENDING
    attempts: int = 0
    last_error: str = ""
    delivered_at: float | None = None

    @property
    def key(self) -> str:
        return f"{self.action}:{self.target}"


@dataclass
class QueueItem:
    id: str
    sender: str
    recipients: list[RecipientRoute]
    client: Client = field(default_factory=Client)
    created: float = field(default_factory=time.time)
    size: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    verdicts: dict[str, Any] = field(default_factory=dict)
    quarantine: bool = False
    archived: str = ""
    attempts: int = 0
    next_attempt: float = 0.0
    reason: str = ""
    held_account: str = ""
    dsn: str = ""  # Message-ID of the DSN sent for this message (at most one)
    # When the held account's token was issued; only a newer token releases the message.
    held_token_issued: float = 0.0
    # Delivery attempts that ended with the daemon dying or the attempt failing unexpectedly.
    crashes: int = 0
    schema: int = SCHEMA_VERSION
    state: str = INCOMING

    @property
    def recipient_addresses(self) -> list[str]:
        return [r.address for r in self.recipients]

    def pending(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.status == PENDING]

    def failed(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.status == FAILED]

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON (by hand: dataclasses.asdict is slow on the accept path)."""
        data = dict(self.__dict__)
        data["client"] = dict(self.client.__dict__)
        data["recipients"] = [
            dict(r.__dict__, actions=[dict(a) for a in r.actions]) for r in self.recipients
        ]
        data["deliveries"] = [dict(d.__dict__, recipients=list(d.recipients)) for d in self.deliveries]
        data["verdicts"] = dict(self.verdicts)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QueueItem:
        """Read a record of any schema version: unknown fields, at any depth, are read past."""
        values = _known(cls, data)
        values.setdefault("schema", 1)  # written before records carried their version
        values["client"] = Client(**_known(Client, data.get("client") or {}))
        values["recipients"] = [RecipientRoute(**_known(RecipientRoute, r)) for r in data.get("recipients", [])]
        values["deliveries"] = [Delivery(**_known(Delivery, d)) for d in data.get("deliveries", [])]
        return cls(**values)

    def summary(self) -> dict[str, Any]:
        """The fields ``queue list --json`` prints."""
        return {
            "id": self.id,
            "state": self.state,
            "sender": self.sender,
            "recipients": self.recipient_addresses,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt or None,
            "reason": self.reason,
            "size": self.size,
            "created": self.created,
        }


_FIELD_NAMES: dict[type, frozenset[str]] = {}


def _known(kind: type, data: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"expected an object for {kind.__name__}")
    names = _FIELD_NAMES.get(kind)
    if names is None:
        names = _FIELD_NAMES[kind] = frozenset(f.name for f in dataclasses.fields(kind))
    if names.issuperset(data):  # what this version wrote: every field known
        return dict(data)
    return {k: v for k, v in data.items() if k in names}


def plan_deliveries(recipients: list[RecipientRoute]) -> list[Delivery]:
    """Group recipients by (action, target) in first-seen order.

    ``store`` means archive only, so it yields no delivery.
    """
    groups: dict[tuple[str, str], Delivery] = {}
    for recipient in recipients:
        for action in recipient.actions:
            kind, target = action.get("type", ""), action.get("target", "")
            if kind == "store":
                continue
            group = groups.setdefault((kind, target), Delivery(action=kind, target=target, recipients=[]))
            if recipient.address not in group.recipients:
                group.recipients.append(recipient.address)
    return list(groups.values())
