"""Messages kept for a person, and what a person does to the queue: operator actions, held and refused messages.

Operator actions (retry, delete, release: queue_ops.py) run in the daemon,
never during a delivery attempt of the same message, and a message held
as its journal record gets its folder first. Messages held for an
account's token go back to work when a newer token comes (tokens/watcher.py).
Messages refused at DATA are kept REJECTED_RETENTION for review. Blocking:
the runner calls these from its thread pool, and queues again what they
move to ``incoming``.
"""

from __future__ import annotations

from collections.abc import Callable

from sesmail_gateway import maillog
from sesmail_gateway.message import HELD, INCOMING, REJECTED
from sesmail_gateway.queue_ops import QueueOpError, perform
from sesmail_gateway.runner.inflight import InFlight
from sesmail_gateway.runner.journaled import Journaled
from sesmail_gateway.spool import Spool, SpoolError

# How long an operator action waits for a delivery attempt of the same message to end.
OPERATOR_WAIT = 5.0
# Messages refused at DATA are kept this long for review and `queue release`.
REJECTED_RETENTION = 30 * 86400.0


class Operator:
    """What a person does to the queue, and the messages kept for one. Blocking."""

    def __init__(self, *, spool: Spool, inflight: InFlight, journaled: Journaled,
                 clock: Callable[[], float]) -> None:
        self.spool = spool
        self.inflight = inflight
        self.journaled = journaled
        self.clock = clock

    def perform(self, action: str, queue_id: str, every: bool) -> tuple[str, list[str]]:
        """An operator action (retry, delete, release): what to tell the operator, and the ids moved to incoming."""
        # An attempt under way on that message gets OPERATOR_WAIT seconds to end before the action is refused.
        return perform(
            self.spool, action, queue_id, every=every,
            reserve=lambda qid: self.inflight.reserve(qid, OPERATOR_WAIT), unreserve=self.inflight.unreserve,
            before=self._out_of_memory)

    def _out_of_memory(self, queue_id: str) -> None:
        """Before an operator acts on ``queue_id``: if it is held in memory, its attempt ends or it gets a folder."""
        if self.journaled.holds(queue_id):  # under way: the attempt ends delivered, or writes its folder
            if not self.inflight.reserve(queue_id, OPERATOR_WAIT):
                raise QueueOpError(f"message {queue_id} is being delivered right now; try again in a moment")
            self.inflight.unreserve(queue_id)
        self.journaled.write_waiting(queue_id)

    def release_held(self, account: str | None, issued_after: float | None) -> list[str]:
        """Move held messages back to ``incoming``, oldest first; the ids moved (``Runner.release_held``)."""
        released: list[str] = []
        for item in sorted(self.spool.items(HELD), key=lambda i: i.created):
            if account is not None and item.held_account != account:
                continue
            if issued_after is not None and item.held_token_issued >= issued_after:
                continue
            held_account = item.held_account
            item.held_account = ""
            item.held_token_issued = 0.0
            item.reason = ""
            self.spool.save(item)
            try:
                self.spool.move(item, INCOMING)
            except SpoolError:
                continue
            maillog.event("released", item.id, account=held_account)
            released.append(item.id)
        return released

    def held_accounts(self) -> dict[str, tuple[int, float]]:
        """Accounts with held messages: (how many, the newest token issue time they were held on). Blocks."""
        accounts: dict[str, tuple[int, float]] = {}
        for item in self.spool.items(HELD):
            count, issued = accounts.get(item.held_account, (0, 0.0))
            accounts[item.held_account] = (count + 1, max(issued, item.held_token_issued))
        return accounts

    def expire_rejected(self) -> int:
        """Delete refused messages older than the retention period; returns how many."""
        horizon = self.clock() - REJECTED_RETENTION
        expired = 0
        for item in self.spool.items(REJECTED):
            if item.created < horizon:
                self.spool.remove(item)
                maillog.event("deleted", item.id, by="retention", state=REJECTED)
                expired += 1
        return expired
