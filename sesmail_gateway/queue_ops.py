"""Operator actions on the queue: retry, delete, release.

The running daemon performs them (``queue`` commands reach it through the
control socket), between two delivery attempts of the message, never during
one. With no daemon running, the command performs them itself while
holding the data dir's lock, so no daemon can start meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

from sesmail_gateway import maillog
from sesmail_gateway.message import DEAD, DEFERRED, FAILED, HELD, INCOMING, PENDING, REJECTED, QueueItem
from sesmail_gateway.spool import Spool, SpoolError

RETRYABLE = (DEFERRED, HELD, DEAD)


class QueueOpError(Exception):
    """The action cannot be done (unknown id, wrong state, being delivered); the text says why."""


def _requeue(spool: Spool, item: QueueItem, event: str) -> None:
    for delivery in item.deliveries:
        if delivery.status == FAILED:
            delivery.status = PENDING
    item.next_attempt = 0.0
    item.held_account = ""
    item.held_token_issued = 0.0
    item.reason = ""
    spool.save(item)
    try:
        spool.move(item, INCOMING)
    except SpoolError as exc:
        raise QueueOpError(str(exc)) from None
    maillog.event(event, item.id, by="operator")


def _find(spool: Spool, queue_id: str) -> QueueItem:
    try:
        return spool.find(queue_id)
    except SpoolError as exc:
        raise QueueOpError(str(exc)) from None


def perform(spool: Spool, action: str, queue_id: str = "", *, every: bool = False,
            reserve: Callable[[str], bool] = lambda _: True,
            unreserve: Callable[[str], None] = lambda _: None,
            before: Callable[[str], None] = lambda _: None) -> tuple[str, list[str]]:
    """Do ``action`` (retry | delete | release); returns (what to tell the operator, ids moved to incoming).

    ``reserve`` keeps the runner off a message while the action changes it
    (False: it is being delivered right now); ``before`` lets the runner
    give a message it holds in memory a folder first.
    """
    if action == "retry" and every:
        items = [item for state in RETRYABLE for item in spool.items(state)]
    else:
        before(queue_id)
        items = [_find(spool, queue_id)]
    requeued: list[str] = []
    for item in items:
        if spool.finishing(item.id):
            raise QueueOpError(f"message {item.id} is already delivered")
        if not reserve(item.id):
            raise QueueOpError(f"message {item.id} is being delivered right now; try again in a moment")
        try:
            if action == "retry":
                if item.state not in RETRYABLE:
                    raise QueueOpError(f"message {item.id} is {item.state}; only {', '.join(RETRYABLE)} "
                                       "can be retried")
                _requeue(spool, item, "retried")
                requeued.append(item.id)
            elif action == "release":
                if item.state != REJECTED:
                    raise QueueOpError(f"message {item.id} is {item.state}; only rejected messages can be released")
                _requeue(spool, item, "released")
                requeued.append(item.id)
            elif action == "delete":
                spool.remove(item)
                maillog.event("deleted", item.id, by="operator", state=item.state)
            else:
                raise QueueOpError(f"unknown queue action {action!r}")
        finally:
            unreserve(item.id)
    if action == "retry":
        return f"queued {len(requeued)} message(s) for delivery now", requeued
    if action == "release":
        return f"released {items[0].id}: it will be delivered along its route", requeued
    return f"deleted {items[0].id} ({items[0].state})", requeued
