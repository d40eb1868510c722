"""The runner: claim → archive → deliver each pending group → finish | defer | hold | dead.

Work comes from three places: the SMTP handler (a message just queued), a
poll of ``incoming/`` (other worker processes, ``queue retry``, recovery),
and a timer heap for ``deferred/``. Blocking work (file I/O, SDK calls) runs
in a thread pool; state is saved after every attempt, so a restart retries
only what is still pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sesmail_gateway import maillog
from sesmail_gateway.archive import Archiver
from sesmail_gateway.config import DeliveryConfig
from sesmail_gateway.deliver import Deliverer
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
from sesmail_gateway.spool import Spool, SpoolError

log = logging.getLogger(__name__)
T = TypeVar("T")

# Messages refused at DATA are kept this long for review and `queue release`.
REJECTED_RETENTION = 30 * 86400.0


def backoff_delay(
    attempt: int, *, base: float, cap: float, retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds before attempt ``attempt + 1``: base doubling per attempt, capped, with jitter.

    The jitter keeps between half and all of the step so a burst of failures
    spreads out; a longer Retry-After from the remote side wins.
    """
    step = min(cap, base * 2.0 ** max(0, attempt - 1))
    delay = step * (0.5 + 0.5 * rng())
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return delay


class Runner:
    def __init__(
        self,
        *,
        spool: Spool,
        archiver: Archiver,
        deliverers: Mapping[str, Deliverer],
        config: DeliveryConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        poll_seconds: float = 1.0,
    ) -> None:
        self.spool = spool
        self.archiver = archiver
        self.deliverers = deliverers
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.poll_seconds = poll_seconds
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._known: set[str] = set()
        self._timers: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency + 2, thread_name_prefix="deliver")

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        report = await self._run(self.spool.recover)
        if report.resumed or report.discarded_tmp or report.corrupt:
            log.info("spool: recovered %d in-flight, discarded %d unacknowledged, set aside %d corrupt",
                     report.resumed, report.discarded_tmp, report.corrupt)
        self._scan_incoming()
        for item in self.spool.items(DEFERRED):
            heapq.heappush(self._timers, (item.next_attempt, item.id))
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.config.concurrency)]
        self._tasks.append(asyncio.create_task(self._scheduler()))
        self._tasks.append(asyncio.create_task(self._poller()))
        self._tasks.append(asyncio.create_task(self._housekeeping()))

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work, give in-flight deliveries ``timeout`` seconds, then cancel.

        A cancelled delivery leaves its message in ``active/``; start-up resumes it.
        """
        deadline = self.clock() + timeout
        while self._busy and self.clock() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def notify(self, queue_id: str) -> None:
        """A message was just queued in ``incoming``."""
        self._submit(INCOMING, queue_id)

    async def release_held(self, account: str | None = None, *, issued_after: float | None = None) -> int:
        """Move held messages back to work, oldest first; returns how many.

        ``account`` limits it to that account's messages; ``issued_after``
        to those held on a token issued before that time (a newer token
        releases them, the same token does not).
        """
        released = await self._run(self._release_held, account, issued_after)
        for queue_id in released:
            self._submit(INCOMING, queue_id)
        return len(released)

    def _release_held(self, account: str | None, issued_after: float | None) -> list[str]:
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

    # -- feeding -----------------------------------------------------------

    def _submit(self, state: str, queue_id: str) -> None:
        if queue_id not in self._known:
            self._known.add(queue_id)
            self._queue.put_nowait((state, queue_id))

    def _scan_incoming(self) -> None:
        for queue_id in self.spool.ids(INCOMING):
            self._submit(INCOMING, queue_id)

    async def _poller(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                self._scan_incoming()
            except OSError as exc:
                log.error("runner: cannot scan incoming: %s", exc)

    async def _housekeeping(self) -> None:
        while True:
            try:
                await self._run(self.expire_rejected)
            except OSError as exc:
                log.error("runner: cannot expire rejected messages: %s", exc)
            await asyncio.sleep(3600)

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

    async def _scheduler(self) -> None:
        while True:
            now = self.clock()
            while self._timers and self._timers[0][0] <= now:
                _, queue_id = heapq.heappop(self._timers)
                self._submit(DEFERRED, queue_id)
            wait = min(self._timers[0][0] - now, 1.0) if self._timers else 1.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))

    async def _worker(self) -> None:
        while True:
            state, queue_id = await self._queue.get()
            self._busy += 1
            try:
                await self._process(state, queue_id)
            except Exception:
                # The message stays where it is (active/ is resumed at start-up); never dropped.
                log.exception("runner: unexpected error on %s", queue_id)
            finally:
                self._busy -= 1
                self._known.discard(queue_id)

    # -- one message -------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _process(self, state: str, queue_id: str) -> None:
        # One thread hand-off per message: every step below blocks (files, SDK calls).
        item = await self._run(self._process_blocking, state, queue_id)
        if item is not None:
            self._schedule(item)

    def _schedule(self, item: QueueItem) -> None:
        """Arm the timer for a deferred message (on the loop: the heap and event are not thread-safe)."""
        if item.state == DEFERRED:
            heapq.heappush(self._timers, (item.next_attempt, item.id))
            self._wake.set()

    def _process_blocking(self, state: str, queue_id: str) -> QueueItem | None:
        """Claim → archive → deliver each pending group → settle. Runs in the delivery pool."""
        try:
            item = self.spool.claim(state, queue_id)
        except SpoolError:
            return None  # moved or deleted meanwhile (queue retry/delete, another runner)
        message = StoredMessage.at(self.spool.message_path(item))
        if not item.archived and not self._archive(item, message):
            return item
        for delivery in item.pending():
            if self._deliver(item, delivery, message) and item.pending():
                # Record each success at once, so a restart never delivers it again;
                # first make what was written (archive, Maildir) durable.
                self.spool.sync_now()
                self.spool.save(item)
        if item.pending() or item.failed():
            self.spool.sync_now()  # the record saved next must not outrun the files it describes
        self._settle(item)
        return item

    def _archive(self, item: QueueItem, message: StoredMessage) -> bool:
        try:
            item.archived = self.archiver.archive(item, message)
        except Exception as exc:
            error = classify(exc)
            log.error("archive: %s failed: %s", item.id, error)
            self.metrics.deliveries.labels(action="archive", outcome="deferred").inc()
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
            else:
                self.spool.finish(item)
            return
        if item.held_account and all(d.action == "forward-to-gmail" and d.target.lower() == item.held_account
                                     for d in pending):
            # Everything left waits for that account's token: hold, spending neither attempts nor age.
            item.reason = f"held: {pending[0].last_error}"
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
        self.spool.save(item)
        self.spool.move(item, DEFERRED)
        maillog.event("deferred", item.id, attempts=item.attempts, next_attempt=round(item.next_attempt, 3),
                      delay=round(delay, 3), reason=reason)

    def _dead(self, item: QueueItem, reason: str) -> None:
        item.reason = reason
        item.next_attempt = 0.0
        self.spool.save(item)
        self.spool.move(item, DEAD)
        maillog.event("dead", item.id, sender=item.sender, reason=reason)
