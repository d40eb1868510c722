"""The Runner: puts the runner's parts together, feeds them work, and runs the loop tasks.

Work comes from journal records (``accept``, ``adopt``), folders in
``incoming/`` (``notify``, and a poll for the ones other processes,
``queue retry`` or recovery wrote), timers for ``deferred/`` (timers.py),
and destinations coming back or due for a probe. Each message goes onto one
queue at a time; workers take entries off it and run the attempts in a
thread pool, several at once when they are bound only for local targets.
Operator actions and held-message releases run in the same pool, and what
they move to ``incoming/`` is queued again.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sesmail_gateway.archive import Archiver
from sesmail_gateway.bounce import Bouncer
from sesmail_gateway.config import DeliveryConfig
from sesmail_gateway.deliver import Deliverer
from sesmail_gateway.delivered import DeliveredLog
from sesmail_gateway.destinations import Destinations
from sesmail_gateway.message import DEFERRED, INCOMING, QueueItem
from sesmail_gateway.metrics import Metrics
from sesmail_gateway.runner.attempt import Attempts
from sesmail_gateway.runner.inflight import InFlight
from sesmail_gateway.runner.journaled import MEMORY, Journaled
from sesmail_gateway.runner.operator import Operator
from sesmail_gateway.runner.outages import Outages
from sesmail_gateway.runner.timers import Timers
from sesmail_gateway.spool import Accepted, Spool

# The runner's lines keep the package's logger name, whichever of its modules writes them.
log = logging.getLogger(__package__)
T = TypeVar("T")

# How many messages bound only for local targets one delivery thread takes at a time.
LOCAL_BATCH = 16


class Runner:
    """Delivers every message the spool accepts, from ``start`` to ``stop``; one per daemon (app.py builds it)."""

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
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.poll_seconds = poll_seconds
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._known: set[str] = set()
        self.timers = Timers()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        self._pool = ThreadPoolExecutor(max_workers=config.concurrency + 2, thread_name_prefix="deliver")
        # Local deliveries (Maildir, folder archive) are file writes of a fraction of a millisecond: one
        # thread does them all. Spread over the pool they only took turns for the interpreter lock,
        # about 80 futex calls per message between 16 threads, with nothing done in parallel.
        self._local_lane = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deliver-local")
        self._loop: asyncio.AbstractEventLoop | None = None
        self.destinations = Destinations(base=config.backoff_base, cap=config.backoff_max, clock=clock)
        self.delivered_log = DeliveredLog(spool.root / "delivered", spool.syncs)
        self.inflight = InFlight(spool.root, hang_seconds=config.hang_timeout)
        self.journaled = Journaled(spool=spool, delivered_log=self.delivered_log, metrics=metrics,
                                   submit=lambda queue_id: self._submit(MEMORY, queue_id))
        self.outages = Outages(self.destinations, root=spool.root, clock=clock, resume=self._resume_soon)
        self.attempts = Attempts(spool=spool, archiver=archiver, deliverers=deliverers, config=config,
                                 metrics=metrics, clock=clock, bouncer=bouncer, delivered_log=self.delivered_log,
                                 journaled=self.journaled, outages=self.outages)
        self.operator = Operator(spool=spool, inflight=self.inflight, journaled=self.journaled, clock=clock)

    @property
    def deliverers(self) -> Mapping[str, Deliverer]:
        """The delivery targets by action (they can be replaced while the runner runs)."""
        return self.attempts.deliverers

    @deliverers.setter
    def deliverers(self, deliverers: Mapping[str, Deliverer]) -> None:
        self.attempts.deliverers = deliverers

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.outages.write_down_file()
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
        for queue_id in await self._run(self.inflight.interrupted):
            await self._run(self.attempts.crashed, queue_id, "the daemon stopped during a delivery attempt")
        self._scan_incoming()
        for item in self.spool.items(DEFERRED):
            self.timers.add(item.next_attempt, item.id)
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.config.concurrency)]
        self._tasks.append(asyncio.create_task(self._scheduler()))
        self._tasks.append(asyncio.create_task(self._poller()))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        self._tasks.append(asyncio.create_task(self._backlog()))

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking work, give in-flight deliveries ``timeout`` seconds, then cancel.

        A delivery cut short leaves its message where it lies (its folder, or its journal segment);
        start-up tries it again.
        """
        deadline = self.clock() + timeout
        while self._busy and self.clock() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        # What was accepted but not tried gets its folder, so the last checkpoint can retire the journals.
        await self._run(self.journaled.write_all)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._local_lane.shutdown(wait=False, cancel_futures=True)
        self.delivered_log.close()

    # -- what the rest of the daemon tells it --------------------------------

    def notify(self, queue_id: str) -> None:
        """A message was just queued in ``incoming``."""
        self._submit(INCOMING, queue_id)

    def accept(self, accepted: Accepted) -> None:
        """A message was just journaled (this process or a worker): deliver it from the record. On the loop."""
        self.journaled.accept(accepted)

    def accept_record(self, meta: bytes, segment: str, offset: int) -> None:
        """``accept`` for a record an SMTP worker process journaled (its metadata as sent over the pipe)."""
        self.journaled.accept_record(meta, segment, offset)

    async def adopt(self, pid: int | None = None, idle_for: float = 0.0) -> int:
        """Deliver what orphaned journal segments hold (start-up; or SMTP worker ``pid`` died). Returns how many."""
        return (await self._adopt(pid, idle_for))[0]

    async def _adopt(self, pid: int | None = None, idle_for: float = 0.0) -> tuple[int, int, int]:
        """``adopt``; also how many remote deliveries were skipped as made and how many may be made twice."""
        return self.journaled.adopt(await self._run(self.journaled.orphaned, pid, idle_for))

    def hung(self) -> dict[str, float]:
        """Attempts under way for longer than ``delivery.hang_timeout``: queue id -> seconds. Logged once each."""
        return self.inflight.hung()

    # -- operator actions and held messages -------------------------------

    async def operate(self, action: str, queue_id: str = "", every: bool = False) -> str:
        """An operator action (retry, delete, release), never during a delivery attempt of that message."""
        message, requeued = await self._run(self.operator.perform, action, queue_id, every)
        for moved in requeued:
            self.outages.force(moved)
            if self.outages.unpark(moved):  # waiting for its destination: straight onto the queue
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
        released = await self._run(self.operator.release_held, account, issued_after)
        for queue_id in released:
            self._submit(INCOMING, queue_id)
        return len(released)

    def held_accounts(self) -> dict[str, tuple[int, float]]:
        """Accounts with held messages: (how many, the newest token issue time they were held on). Blocks."""
        return self.operator.held_accounts()

    # -- feeding -----------------------------------------------------------

    def _submit(self, state: str, queue_id: str) -> None:
        if queue_id not in self._known and not self.spool.finishing(queue_id):
            self._known.add(queue_id)
            self._queue.put_nowait((state, queue_id))

    def _resume_soon(self, parked: dict[str, str]) -> None:
        """Parked messages whose destination works again (from a delivery thread): onto the queue, on the loop."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._resume, parked)

    def _resume(self, parked: dict[str, str]) -> None:
        for queue_id, state in parked.items():
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

    async def _scheduler(self) -> None:
        while True:
            now = self.clock()
            for queue_id in self.timers.due(now):
                self._submit(DEFERRED, queue_id)
            for queue_id, state in self.destinations.probe_candidates().values():
                self._queue.put_nowait((state, queue_id))  # parked ones stay known: straight onto the queue
            await self.timers.sleep(now)

    async def _housekeeping(self) -> None:
        while True:
            try:
                await self._run(self.operator.expire_rejected)
            except OSError as exc:
                log.error("runner: cannot expire rejected messages: %s", exc)
            await asyncio.sleep(3600)

    async def _backlog(self) -> None:
        turns = 0
        while True:
            await asyncio.sleep(1.0)
            turns += 1
            try:
                await self._run(self.journaled.write_overdue)
                if turns % 60 == 0 and self.spool.syncs.failed is None:
                    await self._run(self.journaled.prune_delivered)
                # A journal no process holds or reported (a worker of an earlier daemon that drained its
                # sessions after this one started): delivered from there.
                if turns % 60 == 0 and self.spool.on_accepted is not None \
                        and (adopted := await self.adopt(idle_for=60.0)):
                    log.warning("runner: %d message(s) from an orphaned journal delivered from there", adopted)
            except OSError as exc:
                log.error("runner: cannot write waiting messages to their folders: %s", exc)

    # -- the delivery threads ------------------------------------------------

    async def _worker(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Messages bound only for local targets (Maildir, folder archive) take a fraction of a
            # millisecond each: several go in one thread hand-off, on the local lane. Remote ones go
            # one by one, into the pool.
            local = self._local(*batch[0])
            while local and len(batch) < LOCAL_BATCH and not self._queue.empty():
                following = self._queue.get_nowait()
                if not self._local(*following):
                    self._queue.put_nowait(following)  # for another worker: a remote call never waits here
                    break
                batch.append(following)
            self._busy += len(batch)
            try:
                lane = self._local_lane if local else self._pool
                for item in await self._run(self._process_batch, batch, lane=lane):
                    if item.state == DEFERRED:
                        self.timers.add(item.next_attempt, item.id)
            finally:
                self._busy -= len(batch)
                for _, queue_id in batch:
                    if not self.outages.parked(queue_id):
                        self._known.discard(queue_id)

    def _local(self, state: str, queue_id: str) -> bool:
        accepted = self.journaled.waiting(queue_id) if state == MEMORY else None
        return accepted is not None and self.attempts.local(accepted)

    async def _run(self, fn: Callable[..., T], *args: Any, lane: ThreadPoolExecutor | None = None) -> T:
        """``fn(*args)`` in the delivery pool, or in ``lane``."""
        return await asyncio.get_running_loop().run_in_executor(lane or self._pool, fn, *args)

    def _process_batch(self, batch: list[tuple[str, str]]) -> list[QueueItem]:
        """Attempt each message in turn (in the delivery pool); the ones to schedule again."""
        settled: list[QueueItem] = []
        for state, queue_id in batch:
            try:
                item = self._process_blocking(state, queue_id)
            except Exception as exc:
                # The message stays where it is; never dropped. Too many of these: held for a person.
                log.exception("runner: unexpected error on %s", queue_id)
                self.attempts.crashed(queue_id, f"delivery failed unexpectedly: {type(exc).__name__}")
                continue
            if item is not None:
                settled.append(item)
        return settled

    def _process_blocking(self, state: str, queue_id: str) -> QueueItem | None:
        """Claim → archive → deliver each pending group → settle. Runs in the delivery pool."""
        if not self.inflight.reserve(queue_id):
            return None  # an operator action holds it; it is submitted again afterwards
        with self.inflight.attempt(queue_id):
            return self.attempts.run(state, queue_id)
