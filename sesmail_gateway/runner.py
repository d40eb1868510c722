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
import dataclasses
import heapq
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sesmail_gateway import maillog
from sesmail_gateway.archive import Archiver
from sesmail_gateway.bounce import Bouncer
from sesmail_gateway.config import DeliveryConfig
from sesmail_gateway.deliver import Deliverer
from sesmail_gateway.delivered import LOCAL_ACTIONS, DeliveredLog
from sesmail_gateway.destinations import ARCHIVE, Destinations
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
from sesmail_gateway.queue_ops import QueueOpError, perform
from sesmail_gateway.spool import Accepted, Spool, SpoolError

log = logging.getLogger(__name__)
T = TypeVar("T")

# A queue entry for a message delivered from its journal record (it has no folder).
MEMORY = "memory"
# A message accepted but not yet tried this long after its journal segment was sealed gets a folder
# (the runner is behind: the backlog lives in folders, where `queue list` shows it, not in memory).
BACKLOG_SECONDS = 5.0

# A delivery attempt running this long is taken as hung: the daemon reports itself unhealthy, so
# systemd's watchdog restarts it, and the attempt log counts the attempt as a crash (POISON_LIMIT).
HANG_SECONDS = 900.0

# How many messages bound only for local targets one delivery thread takes at a time.
LOCAL_BATCH = 16

# A message whose delivery attempts crash this many times is held instead of tried again.
POISON_LIMIT = 3
ATTEMPTS = "attempts.log"
DESTINATIONS_FILE = "destinations.json"


class AttemptLog:
    """Which delivery attempts were under way when the daemon died, from an append-only log.

    One line when an attempt starts and one when it ends, written without
    fsync: it must survive the daemon dying (the page cache does), not a
    power cut (which does not repeat on the same message). At start-up the
    attempts that never ended are the ones that took the daemon down.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    def interrupted(self) -> list[str]:
        """Attempts left open by the previous run; the log starts afresh."""
        try:
            lines = self.path.read_bytes().decode("ascii", "replace").splitlines()
        except FileNotFoundError:
            lines = []
        open_ids: dict[str, None] = {}
        for line in lines:
            mark, _, queue_id = line.partition(" ")
            if mark == "S":
                open_ids[queue_id] = None
            elif mark == "E":
                open_ids.pop(queue_id, None)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return list(open_ids)

    def started(self, queue_id: str) -> None:
        if self._fd >= 0:
            os.write(self._fd, f"S {queue_id}\n".encode())

    def ended(self, queue_id: str) -> None:
        if self._fd >= 0:
            os.write(self._fd, f"E {queue_id}\n".encode())


# How long an operator action waits for a delivery attempt of the same message to end.
OPERATOR_WAIT = 5.0
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
        bouncer: Bouncer | None = None,
    ) -> None:
        self.spool = spool
        self.bouncer = bouncer
        self.archiver = archiver
        self.deliverers = deliverers
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.poll_seconds = poll_seconds
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._memory: dict[str, Accepted] = {}  # accepted, waiting to be tried from the journal record
        self._in_memory: dict[str, StoredMessage] = {}  # under way, still without a folder
        self._known: set[str] = set()
        self._parked: set[str] = set()  # waiting in memory for a destination to come back
        self._forced: set[str] = set()  # operator retries: tried at once, destination backoff or not
        # Messages someone is working on right now (a delivery attempt, an operator action).
        self._inflight: set[str] = set()
        self._attempt_started: dict[str, float] = {}  # queue id -> monotonic start of its attempt under way
        self._reported_hung: set[str] = set()
        self._inflight_changed = threading.Condition()
        self._timers: list[tuple[float, str]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency + 2, thread_name_prefix="deliver")
        self._attempts = AttemptLog(spool.root / ATTEMPTS)
        self.destinations = Destinations(base=config.backoff_base, cap=config.backoff_max, clock=clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._down_file = spool.root / DESTINATIONS_FILE
        self.delivered_log = DeliveredLog(spool.root / "delivered", spool.syncs)

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._write_down_file()
        adopting = self.spool.on_accepted is not None
        report = await self._run(lambda: self.spool.recover(replay=not adopting))
        if report.resumed or report.discarded_tmp or report.corrupt:
            log.info("spool: recovered %d in-flight, discarded %d unacknowledged, set aside %d corrupt",
                     report.resumed, report.discarded_tmp, report.corrupt)
        await self._run(self.delivered_log.load)
        if adopting:
            replayed, skipped, repeated = await self._adopt()
            if replayed:
                log.warning("spool: %d message(s) from the journals of the last run delivered again: Maildir and "
                            "archive copies are replaced, not doubled; %d remote delivery(ies) recorded as made "
                            "were skipped; %d not recorded may be made twice", replayed, skipped, repeated)
        for queue_id in await self._run(self._attempts.interrupted):
            await self._run(self._crashed, queue_id, "the daemon stopped during a delivery attempt")
        self._scan_incoming()
        for item in self.spool.items(DEFERRED):
            heapq.heappush(self._timers, (item.next_attempt, item.id))
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.config.concurrency)]
        self._tasks.append(asyncio.create_task(self._scheduler()))
        self._tasks.append(asyncio.create_task(self._poller()))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        self._tasks.append(asyncio.create_task(self._backlog()))

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
        # What was accepted but not tried gets its folder, so the last checkpoint can retire the journals.
        await self._run(self._write_backlog, None)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.delivered_log.close()

    def notify(self, queue_id: str) -> None:
        """A message was just queued in ``incoming``."""
        self._submit(INCOMING, queue_id)

    def accept(self, accepted: Accepted) -> None:
        """A message was just journaled (this process or a worker): deliver it from the record. On the loop."""
        if self.spool.segments.accepted(accepted.segment, accepted.item.id):
            self._take(accepted)

    def accept_record(self, meta: bytes, segment: str, offset: int) -> None:
        """``accept`` for a record an SMTP worker process journaled (its metadata as sent over the pipe)."""
        self.accept(Accepted(QueueItem.from_dict(json.loads(meta)), segment, offset))

    def _take(self, accepted: Accepted) -> None:
        self._memory[accepted.item.id] = accepted
        self._submit(MEMORY, accepted.item.id)

    async def adopt(self, pid: int | None = None, idle_for: float = 0.0) -> int:
        """Deliver what orphaned journal segments hold (start-up; or SMTP worker ``pid`` died). Returns how many."""
        return (await self._adopt(pid, idle_for))[0]

    async def _adopt(self, pid: int | None = None, idle_for: float = 0.0) -> tuple[int, int, int]:
        """``adopt``; also how many remote deliveries were skipped as made and how many may be made twice."""
        found = await self._run(lambda: list(self.spool.adopt(self.spool.orphaned_segments(pid, idle_for=idle_for))))
        skipped = repeated = 0
        for accepted in found:
            skipped += self.delivered_log.apply(accepted.item)
            repeated += sum(1 for d in accepted.item.pending() if d.action not in LOCAL_ACTIONS)
            self._take(accepted)
        self.metrics.replayed.labels(outcome="skipped").inc(skipped)
        self.metrics.replayed.labels(outcome="repeated").inc(repeated)
        return len(found), skipped, repeated

    async def _backlog(self) -> None:
        turns = 0
        while True:
            await asyncio.sleep(1.0)
            turns += 1
            try:
                await self._run(self._write_backlog, time.monotonic() - BACKLOG_SECONDS)
                if turns % 60 == 0 and self.spool.syncs.failed is None:
                    await self._run(self._prune_delivered)
                # A journal no process holds or reported (a worker of an earlier daemon that drained its
                # sessions after this one started): delivered from there.
                if turns % 60 == 0 and self.spool.on_accepted is not None \
                        and (adopted := await self.adopt(idle_for=60.0)):
                    log.warning("runner: %d message(s) from an orphaned journal delivered from there", adopted)
            except OSError as exc:
                log.error("runner: cannot write waiting messages to their folders: %s", exc)

    def _prune_delivered(self) -> None:
        """Drop generations of the delivered log older than every journal segment and than a minute ago."""
        self.delivered_log.prune(self.spool.oldest_journal_ns(), time.time_ns() - 60_000_000_000)

    def hung(self) -> dict[str, float]:
        """Attempts under way for longer than HANG_SECONDS: queue id -> seconds. Logged once each."""
        now = time.monotonic()
        found = {queue_id: now - started for queue_id, started in list(self._attempt_started.items())
                 if now - started > HANG_SECONDS}
        for queue_id in found.keys() - self._reported_hung:
            log.error("runner: the delivery attempt of %s has run for %.0f s and is taken as hung; the daemon "
                      "reports itself unhealthy so the watchdog restarts it (%d such attempts hold the message)",
                      queue_id, found[queue_id], POISON_LIMIT)
        self._reported_hung = set(found)
        return found

    def _write_backlog(self, sealed_before: float | None) -> int:
        """Give a folder to every message not tried yet from a segment sealed before ``sealed_before`` (None: all)."""
        waiting = set(self._memory) if sealed_before is None else self.spool.segments.waiting_since(sealed_before)
        written = 0
        for queue_id in waiting:
            written += self._write_waiting(queue_id)  # False: under way, or written already
        if written and sealed_before is not None:
            log.warning("runner: %d accepted message(s) waited over %.0f s; written to the queue's folders",
                        written, BACKLOG_SECONDS)
        return written

    def _message_of(self, accepted: Accepted) -> StoredMessage:
        if accepted.data is not None:
            return StoredMessage.of(accepted.data)
        return StoredMessage.of(self.spool.segments.read(accepted.segment, accepted.offset).message)

    def _out_of_memory(self, queue_id: str) -> None:
        """Before an operator acts on ``queue_id``: if it is held in memory, its attempt ends or it gets a folder."""
        if queue_id in self._in_memory:  # under way: the attempt ends delivered, or writes its folder
            if not self.reserve(queue_id, OPERATOR_WAIT):
                raise QueueOpError(f"message {queue_id} is being delivered right now; try again in a moment")
            self.unreserve(queue_id)
        self._write_waiting(queue_id)

    def _write_waiting(self, queue_id: str) -> bool:
        """A message accepted and not tried yet gets its folder now (it is tried from there); False if none waits."""
        accepted = self._memory.pop(queue_id, None)
        if accepted is None:
            return False
        self._in_memory[queue_id] = self._message_of(accepted)
        self._ensure_folder(accepted.item)
        return True

    def _ensure_folder(self, item: QueueItem) -> None:
        """A message delivered from its journal record that must outlive it: a durable folder in its state."""
        message = self._in_memory.pop(item.id, None)
        if message is None:
            return
        if any(d.status == DELIVERED for d in item.deliveries):
            self.spool.sync_now()  # the folder must not record a delivery whose copy is not durable yet
        self.spool.materialize(item, message.read())
        self.spool.segments.settled(item.id)

    async def operate(self, action: str, queue_id: str = "", every: bool = False) -> str:
        """An operator action (retry, delete, release), never during a delivery attempt of that message."""
        # An attempt under way on that message gets OPERATOR_WAIT seconds to end before the action is refused.
        message, requeued = await self._run(lambda: perform(
            self.spool, action, queue_id, every=every,
            reserve=lambda qid: self.reserve(qid, OPERATOR_WAIT), unreserve=self.unreserve,
            before=self._out_of_memory))
        for moved in requeued:
            self._forced.add(moved)
            if moved in self._parked:  # waiting for its destination: straight onto the queue
                self._parked.discard(moved)
                self._queue.put_nowait((INCOMING, moved))
            else:
                self._submit(INCOMING, moved)
        return message

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
        if queue_id not in self._known and not self.spool.finishing(queue_id):
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
            for queue_id, state in self.destinations.probe_candidates().values():
                self._queue.put_nowait((state, queue_id))  # parked ones stay known: straight onto the queue
            wait = min(self._timers[0][0] - now, 1.0) if self._timers else 1.0
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that lands as the
            # wait ends, and this loop would then never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(wait, 0.01)):
                    await self._wake.wait()

    async def _worker(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Messages bound only for local targets (Maildir, folder archive) take a fraction of a
            # millisecond each: several go in one thread hand-off. Remote ones go one by one.
            while len(batch) < LOCAL_BATCH and not self._queue.empty() and self._local(*batch[-1]):
                batch.append(self._queue.get_nowait())
            self._busy += len(batch)
            try:
                for item in await self._run(self._process_batch, batch):
                    self._schedule(item)
            finally:
                self._busy -= len(batch)
                for _, queue_id in batch:
                    if queue_id not in self._parked:
                        self._known.discard(queue_id)

    def _local(self, state: str, queue_id: str) -> bool:
        accepted = self._memory.get(queue_id) if state == MEMORY else None
        return (accepted is not None and getattr(self.archiver, "local", False)
                and all(d.action in LOCAL_ACTIONS for d in accepted.item.deliveries))

    # -- one message -------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _process_batch(self, batch: list[tuple[str, str]]) -> list[QueueItem]:
        """Attempt each message in turn (in the delivery pool); the ones to schedule again."""
        settled: list[QueueItem] = []
        for state, queue_id in batch:
            try:
                item = self._process_blocking(state, queue_id)
            except Exception as exc:
                # The message stays where it is; never dropped. Too many of these: held for a person.
                log.exception("runner: unexpected error on %s", queue_id)
                self._crashed(queue_id, f"delivery failed unexpectedly: {type(exc).__name__}")
                continue
            if item is not None:
                settled.append(item)
        return settled

    def _schedule(self, item: QueueItem) -> None:
        """Arm the timer for a deferred message (on the loop: the heap and event are not thread-safe)."""
        if item.state == DEFERRED:
            heapq.heappush(self._timers, (item.next_attempt, item.id))
            self._wake.set()

    def reserve(self, queue_id: str, wait: float = 0.0) -> bool:
        """Keep every other attempt or action off ``queue_id``; False if one still holds it after ``wait`` s."""
        with self._inflight_changed:
            if not self._inflight_changed.wait_for(lambda: queue_id not in self._inflight, timeout=wait):
                return False
            self._inflight.add(queue_id)
            return True

    def unreserve(self, queue_id: str) -> None:
        with self._inflight_changed:
            self._inflight.discard(queue_id)
            self._inflight_changed.notify_all()

    def _process_blocking(self, state: str, queue_id: str) -> QueueItem | None:
        """Claim → archive → deliver each pending group → settle. Runs in the delivery pool."""
        if not self.reserve(queue_id):
            return None  # an operator action holds it; it is submitted again afterwards
        self._attempts.started(queue_id)
        self._attempt_started[queue_id] = time.monotonic()
        try:
            return self._attempt(state, queue_id)
        finally:
            self._attempt_started.pop(queue_id, None)
            # Ended, whatever the outcome (an exception is counted by the caller); only a daemon that
            # dies in the middle leaves the attempt open.
            self._attempts.ended(queue_id)
            self.unreserve(queue_id)

    def _crashed(self, queue_id: str, why: str) -> None:
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

    def _admit(self, destination: str, forced: bool) -> bool:
        return forced or self.destinations.admit(destination)

    def _attempt(self, state: str, queue_id: str) -> QueueItem | None:
        if state != MEMORY:
            return self._try(state, queue_id)
        accepted = self._memory.pop(queue_id, None)
        if accepted is None:
            return None  # written to its folder meanwhile (backlog): the poller finds it there
        self._in_memory[queue_id] = self._message_of(accepted)
        try:
            if accepted.item.state != INCOMING:  # refused at DATA: kept in its folder for review
                return None
            return self._try(state, queue_id, accepted.item)
        finally:
            # Whatever did not end delivered (a crash included) outlives the journal in a folder.
            self._ensure_folder(accepted.item)

    def _try(self, state: str, queue_id: str, item: QueueItem | None = None) -> QueueItem | None:
        self._parked.discard(queue_id)
        # An operator's retry or release is tried now, whatever the destination's backoff says.
        forced = queue_id in self._forced
        self._forced.discard(queue_id)
        if item is None:
            try:
                item = self.spool.claim(state, queue_id)
            except SpoolError:
                return None  # moved or deleted meanwhile (queue retry/delete)
            message = StoredMessage.at(self.spool.message_path(item))
        else:
            message = self._in_memory[queue_id]
        if self.delivered_log.recorded:  # after a restart: what the last run made is not made again
            self.delivered_log.apply(item)
        if not item.archived:
            if not self._admit(ARCHIVE, forced) and self._park(item, ARCHIVE):
                return None
            if not self._archive(item, message):
                return item
            self._came_back(ARCHIVE)
            if message.path is None and getattr(self.archiver, "local", False):
                # The archive copy is a local file now: later copies (Maildir) link to it.
                message = StoredMessage.at(Path(item.archived))
                self._in_memory[queue_id] = message
        waiting_for = ""
        for delivery in item.pending():
            if not self._admit(delivery.key, forced):
                waiting_for = waiting_for or delivery.key
                continue
            if self._deliver(item, delivery, message):
                self._came_back(delivery.key)
                if item.pending() and item.id not in self._in_memory:
                    # Record each success in the folder at once, so a restart never delivers it again;
                    # first make what was written (archive, Maildir) durable. (From a journal record,
                    # a replay makes local copies again by the same name and skips logged remote ones.)
                    self.spool.sync_now()
                    self.spool.save(item)
        if waiting_for and all(not self.destinations.admit_peek(d.key) for d in item.pending()) \
                and self._park(item, waiting_for):
            return None
        if item.pending() or item.failed():
            self.spool.sync_now()  # the record saved next must not outrun the files it describes
        self._settle(item)
        return item

    def _park(self, item: QueueItem, destination: str) -> bool:
        """Wait in memory for ``destination`` (no attempt, no disk write); False if it must be settled now."""
        if self.clock() - item.created >= self.config.max_age:
            return False  # too old to wait: the attempt makes it a dead letter
        self._ensure_folder(item)  # waiting may take long: not in memory
        if not self.destinations.park(destination, item.id, item.state):
            return False
        self._parked.add(item.id)
        return True

    def _came_back(self, destination: str) -> None:
        parked = self.destinations.succeeded(destination)
        if parked is None:
            return  # it was up: the common case, nothing to do
        log.info("runner: %s works again; resuming %d waiting message(s)", destination, len(parked))
        self._write_down_file()
        if parked and self._loop is not None:
            self._loop.call_soon_threadsafe(self._resume, parked)

    def _resume(self, parked: dict[str, str]) -> None:
        for queue_id, state in parked.items():
            self._queue.put_nowait((state, queue_id))

    @property
    def _down_names(self) -> set[str]:
        return {s.destination for s in self.destinations.status()}

    def _write_down_file(self) -> None:
        """What is down, for `queue list` (informational: rewritten at every change, never fsynced)."""
        status = [dataclasses.asdict(s) for s in self.destinations.status()]
        tmp = self._down_file.with_name(f".{self._down_file.name}.tmp")
        try:
            tmp.write_text(json.dumps(status))
            os.replace(tmp, self._down_file)
        except OSError as exc:
            log.warning("runner: cannot write %s: %s", self._down_file, exc)

    def _archive(self, item: QueueItem, message: StoredMessage) -> bool:
        try:
            item.archived = self.archiver.archive(item, message)
        except Exception as exc:
            error = classify(exc)
            log.error("archive: %s failed: %s", item.id, error)
            self.metrics.deliveries.labels(action="archive", outcome="deferred").inc()
            self._went_down(ARCHIVE, error)
            self._defer(item, f"archive failed: {error}", error.retry_after)
            return False
        maillog.event("archived", item.id, location=item.archived)
        return True

    def _went_down(self, destination: str, error: DeliveryError) -> None:
        if isinstance(error, (TokenExpired, PermanentFailure)):
            return
        new = destination not in self._down_names
        until = self.destinations.failed(destination, str(error), error.retry_after)
        if new:
            log.warning("runner: %s is failing (%s); one probe every backoff step, the rest wait (next probe "
                        "in %.0f s)", destination, error, until - self.clock())
        self._write_down_file()

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
        self._went_down(delivery.key, error)
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
            elif self._in_memory.pop(item.id, None) is not None:
                self.spool.segments.delivered(item.id)  # no folder: its journal segment goes when this is durable
            else:
                self.spool.finish(item)
            return
        if item.held_account and all(d.action == "forward-to-gmail" and d.target.lower() == item.held_account
                                     for d in pending):
            # Everything left waits for that account's token: hold, spending neither attempts nor age.
            item.reason = f"held: {pending[0].last_error}"
            self._ensure_folder(item)
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
        self._ensure_folder(item)
        self.spool.save(item)
        self.spool.move(item, DEFERRED)
        maillog.event("deferred", item.id, attempts=item.attempts, next_attempt=round(item.next_attempt, 3),
                      delay=round(delay, 3), reason=reason)

    def _dead(self, item: QueueItem, reason: str) -> None:
        item.reason = reason
        item.next_attempt = 0.0
        self._ensure_folder(item)
        if self.bouncer is not None:  # bounce.mode = "dsn": a DSN to an authenticated sender, at most once
            self.bouncer.bounce(item, item.failed(), reason)
        self.spool.save(item)
        self.spool.move(item, DEAD)
        maillog.event("dead", item.id, sender=item.sender, reason=reason)
