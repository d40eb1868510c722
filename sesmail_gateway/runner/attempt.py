"""One attempt on one message: archive → deliver each pending group → delivered | deferred | held | dead.

The message comes from its folder (claimed) or from its journal record
(journaled.py). Each delivery group is tried unless its destination is down
(outages.py: the message is parked instead, or tried as the probe); each
outcome is recorded on the group, and a partial success is saved at once
to a message with a folder. Then the message is settled: retired when
nothing is pending, held when all that is left waits for one account's
token, dead when it failed or grew too old, deferred (backoff.py) otherwise.
Blocking: runs in a delivery thread, one attempt per message at a time
(inflight.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from sesmail_gateway import maillog
from sesmail_gateway.archive import Archiver
from sesmail_gateway.bounce import Bouncer
from sesmail_gateway.config import DeliveryConfig
from sesmail_gateway.deliver import Deliverer
from sesmail_gateway.delivered import LOCAL_ACTIONS, DeliveredLog
from sesmail_gateway.destinations import ARCHIVE
from sesmail_gateway.errors import DeliveryError, PermanentFailure, TemporaryFailure, TokenExpired, classify
from sesmail_gateway.message import (
    DEAD,
    DEFERRED,
    DELIVERED,
    FAILED,
    HELD,
    INCOMING,
    REJECTED,
    Delivery,
    QueueItem,
    StoredMessage,
)
from sesmail_gateway.metrics import Metrics
from sesmail_gateway.runner.backoff import backoff_delay
from sesmail_gateway.runner.inflight import POISON_LIMIT
from sesmail_gateway.runner.journaled import MEMORY, Journaled
from sesmail_gateway.runner.outages import Outages
from sesmail_gateway.spool import Accepted, Spool, SpoolError

# The runner's lines keep the package's logger name, whichever of its modules writes them.
log = logging.getLogger(__package__)


class Attempts:
    """Runs attempts, one message each (several at once on different messages, from the delivery threads)."""

    def __init__(
        self,
        *,
        spool: Spool,
        archiver: Archiver,
        deliverers: Mapping[str, Deliverer],
        config: DeliveryConfig,
        metrics: Metrics,
        clock: Callable[[], float],
        bouncer: Bouncer | None,
        delivered_log: DeliveredLog,
        journaled: Journaled,
        outages: Outages,
    ) -> None:
        self.spool = spool
        self.archiver = archiver
        self.deliverers = deliverers
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.bouncer = bouncer
        self.delivered_log = delivered_log
        self.journaled = journaled
        self.outages = outages

    def local(self, accepted: Accepted) -> bool:
        """Bound only for local targets (Maildir, folder archive): an attempt takes a fraction of a millisecond."""
        return (getattr(self.archiver, "local", False)
                and all(d.action in LOCAL_ACTIONS for d in accepted.item.deliveries))

    def run(self, state: str, queue_id: str) -> QueueItem | None:
        """One attempt on ``queue_id``, found in ``state`` (MEMORY: its journal record); the message as it ends,
        or None when there is nothing to schedule (gone, parked, or given a folder the poller finds)."""
        if state != MEMORY:
            return self._try(state, queue_id)
        accepted = self.journaled.begin(queue_id)
        if accepted is None:
            return None  # written to its folder meanwhile (backlog): the poller finds it there
        try:
            if accepted.item.state != INCOMING:  # refused at DATA: kept in its folder for review
                return None
            return self._try(state, queue_id, accepted.item)
        finally:
            # Whatever did not end delivered (a crash included) outlives the journal in a folder.
            self.journaled.ensure_folder(accepted.item)

    def crashed(self, queue_id: str, why: str) -> None:
        """Count an attempt that crashed; at POISON_LIMIT the message is held for a person (``queue retry``)."""
        try:
            item = self.spool.find(queue_id)
        except SpoolError:
            return
        item.crashes += 1
        if item.crashes < POISON_LIMIT or item.state in (HELD, DEAD, REJECTED):
            self.spool.save(item)
            log.warning("runner: %s: %s (%d of %d before it is held)", queue_id, why, item.crashes, POISON_LIMIT)
            return
        item.reason = f"held: {why}, {item.crashes} times; `queue retry {queue_id}` tries again"
        self.spool.save(item)
        self.spool.move(item, HELD)
        maillog.event("held", item.id, reason=item.reason)

    def _try(self, state: str, queue_id: str, item: QueueItem | None = None) -> QueueItem | None:
        self.outages.unpark(queue_id)
        # An operator's retry or release is tried now, whatever the destination's backoff says.
        forced = self.outages.forced(queue_id)
        if item is None:
            try:
                item = self.spool.claim(state, queue_id)
            except SpoolError:
                return None  # moved or deleted meanwhile (queue retry/delete)
            message = StoredMessage.at(self.spool.message_path(item))
        else:
            message = self.journaled.message(queue_id)
        if self.delivered_log.recorded:  # after a restart: what the last run made is not made again
            self.delivered_log.apply(item)
        if not item.archived:
            if not self.outages.admit(ARCHIVE, forced) and self._park(item, ARCHIVE):
                return None
            if not self._archive(item, message):
                return item
            self.outages.came_back(ARCHIVE)
            if message.path is None and getattr(self.archiver, "local", False):
                # The archive copy is a local file now: later copies (Maildir) link to it.
                message = StoredMessage.at(Path(item.archived))
                self.journaled.now_at(queue_id, message)
        waiting_for = ""
        for delivery in item.pending():
            if not self.outages.admit(delivery.key, forced):
                waiting_for = waiting_for or delivery.key
                continue
            if self._deliver(item, delivery, message):
                self.outages.came_back(delivery.key)
                if item.pending() and not self.journaled.holds(item.id):
                    # Record each success in the folder at once, so a restart never delivers it again;
                    # first make what was written (archive, Maildir) durable. (From a journal record,
                    # a replay makes local copies again by the same name and skips logged remote ones.)
                    self.spool.sync_now()
                    self.spool.save(item)
        if waiting_for and self.outages.all_down(item) and self._park(item, waiting_for):
            return None
        if item.pending() or item.failed():
            self.spool.sync_now()  # the record saved next must not outrun the files it describes
        self._settle(item)
        return item

    def _park(self, item: QueueItem, destination: str) -> bool:
        """Wait in memory for ``destination`` (no attempt, no disk write); False if it must be settled now."""
        if self.clock() - item.created >= self.config.max_age:
            return False  # too old to wait: the attempt makes it a dead letter
        self.journaled.ensure_folder(item)  # waiting may take long: not in memory
        return self.outages.park(destination, item)

    def _archive(self, item: QueueItem, message: StoredMessage) -> bool:
        try:
            item.archived = self.archiver.archive(item, message)
        except Exception as exc:
            error = classify(exc)
            log.error("archive: %s failed: %s", item.id, error)
            self.metrics.deliveries.labels(action="archive", outcome="deferred").inc()
            self.outages.went_down(ARCHIVE, error)
            self._defer(item, f"archive failed: {error}", error.retry_after)
            return False
        maillog.event("archived", item.id, location=item.archived)
        return True

    def _deliver(self, item: QueueItem, delivery: Delivery, message: StoredMessage) -> bool:
        """One attempt; the outcome is recorded on ``delivery``. True when delivered."""
        deliverer = self.deliverers.get(delivery.action)
        try:
            if deliverer is None:
                raise TemporaryFailure(f"no deliverer for action {delivery.action!r}")
            deliverer.deliver(item, delivery, message)
        except Exception as exc:
            self._record_failure(item, delivery, classify(exc))
            return False
        self.delivered_log.record(item, delivery.key, delivery.action)
        delivery.status = DELIVERED
        delivery.attempts += 1
        delivery.delivered_at = self.clock()
        delivery.last_error = ""
        self.metrics.deliveries.labels(action=delivery.action, outcome="delivered").inc()
        maillog.event("delivered", item.id, action=delivery.action, target=delivery.target,
                      recipients=delivery.recipients, attempts=delivery.attempts)
        return True

    def _record_failure(self, item: QueueItem, delivery: Delivery, error: DeliveryError) -> None:
        delivery.last_error = str(error)
        self.outages.went_down(delivery.key, error)
        if isinstance(error, TokenExpired):
            # Held: no attempt is spent; a newer token releases it.
            item.held_account = error.account or delivery.target.lower()
            item.held_token_issued = max(item.held_token_issued, error.issued_at)
            self.metrics.deliveries.labels(action=delivery.action, outcome="held").inc()
            return
        delivery.attempts += 1
        if isinstance(error, PermanentFailure):
            delivery.status = FAILED
            self.metrics.deliveries.labels(action=delivery.action, outcome="failed").inc()
        else:
            self.metrics.deliveries.labels(action=delivery.action, outcome="deferred").inc()
        if error.retry_after is not None:
            item.next_attempt = max(item.next_attempt, self.clock() + error.retry_after)

    def _settle(self, item: QueueItem) -> None:
        """Decide where the message goes after a round of attempts."""
        pending = item.pending()
        if not pending:
            if item.failed():
                self._dead(item, "; ".join(f"{d.key}: {d.last_error}" for d in item.failed()))
            elif not self.journaled.delivered(item.id):  # True: no folder, its journal segment goes when durable
                self.spool.finish(item)
            return
        if item.held_account and all(d.action == "forward-to-gmail" and d.target.lower() == item.held_account
                                     for d in pending):
            # Everything left waits for that account's token: hold, spending neither attempts nor age.
            item.reason = f"held: {pending[0].last_error}"
            self.journaled.ensure_folder(item)
            self.spool.save(item)
            self.spool.move(item, HELD)
            maillog.event("held", item.id, account=item.held_account, reason=pending[0].last_error)
            return
        # Other deliveries are still worth retrying: defer; the held one fails fast meanwhile.
        item.held_account = ""
        if self.clock() - item.created >= self.config.max_age:
            for delivery in pending:
                delivery.status = FAILED
                delivery.last_error = f"gave up after {self.config.max_age:.0f}s: {delivery.last_error}"
            self._dead(item, "; ".join(f"{d.key}: {d.last_error}" for d in pending))
            return
        retry_after = item.next_attempt - self.clock() if item.next_attempt > self.clock() else None
        self._defer(item, "; ".join(f"{d.key}: {d.last_error}" for d in pending), retry_after)

    def _defer(self, item: QueueItem, reason: str, retry_after: float | None) -> None:
        item.attempts += 1
        delay = backoff_delay(item.attempts, base=self.config.backoff_base, cap=self.config.backoff_max,
                              retry_after=retry_after)
        item.next_attempt = self.clock() + delay
        item.reason = reason
        self.journaled.ensure_folder(item)
        self.spool.save(item)
        self.spool.move(item, DEFERRED)
        maillog.event("deferred", item.id, attempts=item.attempts, next_attempt=round(item.next_attempt, 3),
                      delay=round(delay, 3), reason=reason)

    def _dead(self, item: QueueItem, reason: str) -> None:
        item.reason = reason
        item.next_attempt = 0.0
        self.journaled.ensure_folder(item)
        if self.bouncer is not None:  # bounce.mode = "dsn": a DSN to an authenticated sender, at most once
            self.bouncer.bounce(item, item.failed(), reason)
        self.spool.save(item)
        self.spool.move(item, DEAD)
        maillog.event("dead", item.id, sender=item.sender, reason=reason)
