"""The runner against a real spool in a temp folder, with scripted delivery targets.

The targets are in-memory twins with failures scripted per call (as Mailman's
testing MTA does); the spool, archive folder and state moves are real.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest

from sesmail_gateway.archive.local import FolderArchiver
from sesmail_gateway.config import DeliveryConfig
from sesmail_gateway.errors import PermanentFailure, TemporaryFailure, TokenExpired
from sesmail_gateway.message import (
    DEAD,
    DEFERRED,
    DELIVERED,
    HELD,
    INCOMING,
    PENDING,
    REJECTED,
    SCHEMA_VERSION,
    Delivery,
    QueueItem,
    RecipientRoute,
    StoredMessage,
    plan_deliveries,
)
from sesmail_gateway.metrics import Metrics
from sesmail_gateway.queue_ops import QueueOpError
from sesmail_gateway.runner import POISON_LIMIT, Runner, backoff_delay
from sesmail_gateway.spool import Spool, SpoolError, new_queue_id, run_checkpoints


class ScriptedTarget:
    """Fails per call as scripted (an exception, or None for success); records every call."""

    def __init__(self, *script: BaseException | None) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, str]] = []

    def deliver(self, item: QueueItem, delivery: Delivery, message: StoredMessage) -> None:
        self.calls.append((item.id, delivery.target))
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome


class ScriptedArchive(FolderArchiver):
    def __init__(self, root: Path, *script: BaseException | None) -> None:
        super().__init__(root)
        self.script = list(script)
        self.calls = 0

    def archive(self, item: QueueItem, message: StoredMessage) -> str:
        self.calls += 1
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        return super().archive(item, message)


def make_item(*targets: str) -> QueueItem:
    recipients = [RecipientRoute(f"user{i}@example.test", "*", "catch-all", [{"type": "maildir", "target": t}])
                  for i, t in enumerate(targets)]
    return QueueItem(id=new_queue_id(), sender="a@sender.test", recipients=recipients,
                     deliveries=plan_deliveries(recipients))


def where(spool: Spool, queue_id: str) -> str | None:
    try:
        return spool.find(queue_id).state
    except SpoolError:
        return None


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("runner did not reach the expected state")
        await asyncio.sleep(0.01)


@pytest.fixture(params=["journal", "folders"])
def spool(tmp_path: Path, request: pytest.FixtureRequest) -> Spool:
    """The spool as the daemon runs it (messages delivered from the journal), and as a spool without a runner."""
    spool = Spool(tmp_path / "spool", sweeper=True)
    if request.param == "journal":
        spool.on_sealed = spool.segments.sealed  # started() hands accepted messages to the runner
    return spool


async def started(spool: Spool, tmp_path: Path, target: ScriptedTarget, *, archive: FolderArchiver | None = None,
                  max_age: float = 3600.0, concurrency: int = 4) -> Runner:
    runner = Runner(
        spool=spool, archiver=archive or FolderArchiver(tmp_path / "archive"), deliverers={"maildir": target},
        config=DeliveryConfig(concurrency=concurrency, max_age=max_age, backoff_base=0.05, backoff_max=0.1),
        metrics=Metrics(), poll_seconds=0.05,
    )
    spool.on_ready = runner.notify
    if spool.on_sealed is not None:
        spool.on_accepted = runner.accept
    await runner.start()
    checkpoints = asyncio.create_task(run_checkpoints(spool, 0.05))
    runner_stop = runner.stop

    async def stop(timeout: float = 30.0) -> None:
        await runner_stop(timeout)
        checkpoints.cancel()
        await spool.close()

    runner.stop = stop  # type: ignore[method-assign]
    return runner


async def queue(spool: Spool, queued: QueueItem) -> None:
    """Accept a message; a started runner hears of it through the spool's on_ready."""
    await spool.enqueue(queued, b"Subject: t\r\n\r\nbody\r\n")


def test_backoff_doubles_with_jitter_and_honours_retry_after() -> None:
    low, high = (lambda: 0.0), (lambda: 1.0)
    assert backoff_delay(1, base=10, cap=3600, rng=high) == 10
    assert backoff_delay(3, base=10, cap=3600, rng=high) == 40
    assert backoff_delay(3, base=10, cap=3600, rng=low) == 20
    assert backoff_delay(20, base=10, cap=3600, rng=high) == 3600
    assert backoff_delay(1, base=10, cap=3600, retry_after=120, rng=high) == 120
    assert backoff_delay(5, base=10, cap=3600, retry_after=1, rng=high) == 160


async def test_archive_then_deliver_then_remove(spool: Spool, tmp_path: Path) -> None:
    target = ScriptedTarget()
    runner = await started(spool, tmp_path, target)
    queued = make_item("mail")
    await queue(spool, queued)
    await until(lambda: target.calls and where(spool, queued.id) is None)
    await runner.stop()
    assert target.calls == [(queued.id, "mail")]
    archived = list((tmp_path / "archive").rglob(f"{queued.id}.eml"))
    assert archived and archived[0].read_bytes() == b"Subject: t\r\n\r\nbody\r\n"


async def test_temporary_failure_defers_then_retries_only_what_is_pending(spool: Spool, tmp_path: Path) -> None:
    # First call (target a) works, second (target b) fails once, then works.
    target = ScriptedTarget(None, TemporaryFailure("mailbox busy"), None)
    runner = await started(spool, tmp_path, target)
    queued = make_item("a", "b")
    await queue(spool, queued)
    await until(lambda: where(spool, queued.id) == DEFERRED)
    deferred = spool.find(queued.id)
    assert deferred.attempts == 1 and "mailbox busy" in deferred.reason
    assert [d.status for d in deferred.deliveries] == [DELIVERED, PENDING]
    await until(lambda: where(spool, queued.id) is None)
    await runner.stop()
    assert target.calls == [(queued.id, "a"), (queued.id, "b"), (queued.id, "b")]


async def test_permanent_failure_is_a_dead_letter_with_its_reason(spool: Spool, tmp_path: Path) -> None:
    runner = await started(spool, tmp_path, ScriptedTarget(PermanentFailure("no such mailbox")))
    queued = make_item("a")
    await queue(spool, queued)
    await until(lambda: where(spool, queued.id) == DEAD)
    await runner.stop()
    assert "no such mailbox" in spool.find(queued.id).reason


async def test_unknown_errors_are_temporary(spool: Spool, tmp_path: Path) -> None:
    target = ScriptedTarget(RuntimeError("surprise"), None)
    runner = await started(spool, tmp_path, target)
    queued = make_item("a")
    await queue(spool, queued)
    await until(lambda: len(target.calls) == 2 and where(spool, queued.id) is None)
    await runner.stop()


def gmail_item(*accounts: str) -> QueueItem:
    recipients = [RecipientRoute(f"user{i}@example.test", "*", "catch-all", [{"type": "forward-to-gmail", "target": a}])
                  for i, a in enumerate(accounts)]
    return QueueItem(id=new_queue_id(), sender="a@sender.test", recipients=recipients,
                     deliveries=plan_deliveries(recipients))


async def gmail_runner(spool: Spool, tmp_path: Path, target: ScriptedTarget, concurrency: int = 4) -> Runner:
    runner = await started(spool, tmp_path, ScriptedTarget(), concurrency=concurrency)
    runner.deliverers = {"forward-to-gmail": target}
    return runner


async def test_expired_token_holds_without_spending_attempts(spool: Spool, tmp_path: Path) -> None:
    target = ScriptedTarget(TokenExpired("invalid_grant", account="me@gmail.test", issued_at=100.0), None)
    runner = await gmail_runner(spool, tmp_path, target)
    queued = gmail_item("me@gmail.test")
    await queue(spool, queued)
    await until(lambda: where(spool, queued.id) == HELD)
    held = spool.find(queued.id)
    assert held.attempts == 0 and held.deliveries[0].attempts == 0
    assert held.held_account == "me@gmail.test" and held.held_token_issued == 100.0
    assert "invalid_grant" in held.reason
    assert runner.held_accounts() == {"me@gmail.test": (1, 100.0)}
    assert await runner.release_held("someone-else@gmail.test") == 0
    # The token it failed on, or an older one, releases nothing; a newer one does.
    assert await runner.release_held("me@gmail.test", issued_after=100.0) == 0
    assert len(target.calls) == 1
    assert await runner.release_held("me@gmail.test", issued_after=101.0) == 1
    await until(lambda: where(spool, queued.id) is None)
    await runner.stop()
    assert len(target.calls) == 2


async def test_held_messages_resume_oldest_first(spool: Spool, tmp_path: Path) -> None:
    dead = TokenExpired("invalid_grant", account="me@gmail.test", issued_at=5.0)
    target = ScriptedTarget(dead, dead, dead)
    runner = await gmail_runner(spool, tmp_path, target, concurrency=1)  # one at a time: the order shows
    items = [gmail_item("me@gmail.test") for _ in range(3)]
    for queued in items:
        await queue(spool, queued)
    await until(lambda: all(where(spool, i.id) == HELD for i in items))
    target.calls.clear()
    assert await runner.release_held("me@gmail.test", issued_after=6.0) == 3
    await until(lambda: len(target.calls) == 3)
    await runner.stop()
    assert [queue_id for queue_id, _ in target.calls] == [i.id for i in items]
    assert [e for e in items] == sorted(items, key=lambda i: i.created)


async def test_a_held_account_does_not_hold_other_deliveries(spool: Spool, tmp_path: Path) -> None:
    # Two accounts: one token is dead, the other delivers; the message is not held on the dead one alone
    # while the other still has work, and a held message keeps what was delivered.
    target = ScriptedTarget(TokenExpired("invalid_grant", account="dead@gmail.test"), None)
    runner = await gmail_runner(spool, tmp_path, target)
    queued = gmail_item("dead@gmail.test", "alive@gmail.test")
    await queue(spool, queued)
    await until(lambda: where(spool, queued.id) == HELD)
    await runner.stop()
    held = spool.find(queued.id)
    assert [d.status for d in held.deliveries] == [PENDING, DELIVERED]
    assert held.held_account == "dead@gmail.test"


async def test_messages_older_than_max_age_go_dead(spool: Spool, tmp_path: Path) -> None:
    runner = await started(spool, tmp_path, ScriptedTarget(*[TemporaryFailure("down")] * 50), max_age=0.3)
    queued = make_item("a")
    await queue(spool, queued)
    await until(lambda: where(spool, queued.id) == DEAD)
    await runner.stop()
    assert "gave up after" in spool.find(queued.id).reason


async def test_archive_failure_defers_before_any_delivery(spool: Spool, tmp_path: Path) -> None:
    target = ScriptedTarget()
    archive = ScriptedArchive(tmp_path / "archive", OSError(5, "I/O error"))
    runner = await started(spool, tmp_path, target, archive=archive)
    queued = make_item("a")
    await queue(spool, queued)
    await until(lambda: where(spool, queued.id) == DEFERRED)
    assert target.calls == []
    await until(lambda: where(spool, queued.id) is None)
    await runner.stop()
    assert archive.calls == 2 and len(target.calls) == 1


async def test_start_resumes_everything_found_on_disk(spool: Spool, tmp_path: Path) -> None:
    waiting, interrupted = make_item("a"), make_item("b")
    await queue(spool, waiting)
    await queue(spool, interrupted)
    await spool.close()  # folders written
    spool.claim(INCOMING, interrupted.id)  # as if the daemon died mid-delivery
    target = ScriptedTarget()
    runner = await started(spool, tmp_path, target)
    await until(lambda: len(target.calls) == 2)
    await until(lambda: not spool.ids(INCOMING))
    await runner.stop()
    assert sorted(c[0] for c in target.calls) == sorted([waiting.id, interrupted.id])


async def test_refused_messages_are_kept_thirty_days_then_deleted(spool: Spool, tmp_path: Path) -> None:
    now = time.time()
    old, recent = make_item("a"), make_item("b")
    old.state = recent.state = REJECTED
    old.created, recent.created = now - 31 * 86400, now - 29 * 86400
    await queue(spool, old)
    await queue(spool, recent)
    await spool.close()
    target = ScriptedTarget()
    runner = await started(spool, tmp_path, target)
    await until(lambda: where(spool, old.id) is None)
    assert where(spool, recent.id) == REJECTED
    await runner.stop()
    assert target.calls == []  # refused messages are never delivered on their own


class BlockingTarget:
    """Holds each delivery until the test lets it go."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()
        self.calls = 0

    def deliver(self, item: QueueItem, delivery: Delivery, message: StoredMessage) -> None:
        self.calls += 1
        self.entered.set()
        assert self.go.wait(10)


async def test_an_operator_delete_never_races_a_delivery(spool: Spool, tmp_path: Path) -> None:
    target = BlockingTarget()
    runner = await started(spool, tmp_path, ScriptedTarget())
    runner.deliverers = {"maildir": target}
    queued = make_item("mail")
    await queue(spool, queued)
    await asyncio.to_thread(target.entered.wait, 10)
    with mock.patch("sesmail_gateway.runner.operator.OPERATOR_WAIT", 0.2), \
            pytest.raises(QueueOpError, match="being delivered right now"):
        await runner.operate("delete", queued.id)
    assert where(spool, queued.id) in (INCOMING, None)  # untouched by the refused delete (None: still in memory)
    target.go.set()
    await until(lambda: spool.finishing(queued.id) or where(spool, queued.id) is None)
    with pytest.raises(QueueOpError):
        await runner.operate("delete", queued.id)  # delivered meanwhile: nothing reports a delete
    await runner.stop()
    assert target.calls == 1


async def test_an_operator_retry_brings_a_dead_letter_back_at_once(spool: Spool, tmp_path: Path) -> None:
    target = ScriptedTarget(PermanentFailure("no such mailbox"), None)
    runner = await started(spool, tmp_path, target)
    queued = make_item("a")
    await queue(spool, queued)
    await until(lambda: where(spool, queued.id) == DEAD)
    assert await runner.operate("retry", queued.id) == "queued 1 message(s) for delivery now"
    await until(lambda: len(target.calls) == 2)
    await runner.stop()


async def test_a_message_that_keeps_crashing_its_delivery_is_held_not_retried_forever(
        spool: Spool, tmp_path: Path) -> None:
    target = ScriptedTarget()
    runner = await started(spool, tmp_path, target)

    def settle_with_a_bug(item: QueueItem) -> None:  # a runner bug that only this message triggers
        raise KeyError("surprise")

    runner.attempts._settle = settle_with_a_bug  # type: ignore[method-assign]
    queued = make_item("mail")
    await queue(spool, queued)
    await until(lambda: where(spool, queued.id) == HELD)
    await runner.stop()
    held = spool.find(queued.id)
    # From the journal, the first attempt's delivery is recorded in the folder the crash gave the message,
    # so it is not made again; from a folder written before the attempt, each retry delivers again.
    assert len(target.calls) == (1 if spool.on_accepted else POISON_LIMIT) and held.crashes == POISON_LIMIT
    assert "delivery failed unexpectedly: KeyError" in held.reason and "queue retry" in held.reason


async def test_an_attempt_the_daemon_died_in_counts_as_a_crash(spool: Spool, tmp_path: Path) -> None:
    queued = make_item("mail")
    await queue(spool, queued)
    await spool.close()
    # Two earlier runs died while delivering it (what they left in the attempt log).
    (spool.root / "attempts.log").write_text(f"S {queued.id}\nS OTHER\nE OTHER\n")
    spool.save(QueueItem.from_dict({**spool.find(queued.id).to_dict(), "crashes": POISON_LIMIT - 1}))
    target = ScriptedTarget()
    runner = await started(spool, tmp_path, target)
    await until(lambda: where(spool, queued.id) == HELD)
    await runner.stop()
    assert target.calls == []
    assert "the daemon stopped during a delivery attempt" in spool.find(queued.id).reason


async def test_a_record_from_a_newer_version_is_delivered_not_set_aside(spool: Spool, tmp_path: Path) -> None:
    queued = make_item("mail")
    await queue(spool, queued)
    await spool.close()
    # The record as a newer version would have written it: extra fields at every level.
    meta = spool.root / INCOMING / queued.id / "meta.json"
    newer = json.loads(meta.read_bytes())
    newer.update(schema=SCHEMA_VERSION + 1, priority="bulk")
    newer["client"]["asn"] = 64500
    newer["recipients"][0]["notify"] = ["FAILURE"]
    newer["deliveries"][0]["dsn_id"] = "x"
    meta.write_text(json.dumps(newer))
    target = ScriptedTarget()
    runner = await started(spool, tmp_path, target)
    await until(lambda: target.calls)
    await runner.stop()
    assert target.calls == [(queued.id, "mail")]
    assert not list((spool.root / "corrupt").iterdir())
    assert QueueItem.from_dict({k: v for k, v in newer.items() if k != "schema"}).schema == 1


class Outage:
    """A destination that fails temporarily until told otherwise; counts every attempt."""

    def __init__(self) -> None:
        self.down = True
        self.calls = 0
        self.delivered: set[str] = set()
        self._lock = threading.Lock()

    def deliver(self, item: QueueItem, delivery: Delivery, message: StoredMessage) -> None:
        with self._lock:
            self.calls += 1
        if self.down:
            raise TemporaryFailure("connection refused")
        with self._lock:
            self.delivered.add(item.id)


async def test_an_outage_costs_a_probe_per_backoff_step_and_the_queue_resumes_together(
        spool: Spool, tmp_path: Path) -> None:
    target = Outage()
    runner = await started(spool, tmp_path, ScriptedTarget())
    runner.deliverers = {"maildir": target}
    queued = [make_item("mail") for _ in range(2000)]
    for one in queued:
        await queue(spool, one)
    await until(lambda: runner.destinations.status() and runner.destinations.status()[0].parked >= 1950, timeout=60)
    # A few backoff steps (0.05 s doubling to 0.1 s) pass with the destination down.
    steps_before = target.calls
    await asyncio.sleep(0.5)  # the outage itself: a window of time, not a wait for an event
    probes = target.calls - steps_before
    assert probes <= 12, f"{probes} attempts in 0.5 s of outage for 2000 queued messages"
    # The first wave (one per runner worker) and a probe per step while 2000 were queued: not 2000 x steps.
    assert target.calls < len(queued) / 10
    status = runner.destinations.status()
    assert [s.destination for s in status] == ["maildir:mail"] and "connection refused" in status[0].reason
    assert "maildir:mail" in (spool.root / "destinations.json").read_text()
    target.down = False
    await until(lambda: len(target.delivered) == 2000, timeout=120)
    await runner.stop()
    assert runner.destinations.status() == []
    assert json.loads((spool.root / "destinations.json").read_text()) == []


async def test_a_destination_that_recovers_with_nothing_waiting_is_no_longer_shown(
        spool: Spool, tmp_path: Path) -> None:
    runner = await started(spool, tmp_path, ScriptedTarget(TemporaryFailure("busy"), None))
    queued = make_item("mail")
    await queue(spool, queued)
    await until(lambda: where(spool, queued.id) is None or spool.finishing(queued.id))
    await runner.stop()
    assert runner.destinations.status() == []
    assert json.loads((spool.root / "destinations.json").read_text()) == []
