"""The composition root: the one-worker daemon and an SMTP worker build their SMTP side from one config.

Everything here is real: the rule store on disk, the spool, SMTP servers on
127.0.0.1, the DNS test server, the runner delivering into a Maildir, and
the pipe a worker reports over.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import smtplib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from sesmail_gateway.compose import (
    DeliverySide,
    SmtpSide,
    WorkerSide,
    build_delivery_side,
    build_smtp_side,
    build_worker_side,
)
from sesmail_gateway.config import Config, load_mapping
from sesmail_gateway.metrics import Metrics
from sesmail_gateway.relay import MetricsRelay
from sesmail_gateway.routes import Action, Rule
from sesmail_gateway.smtp.limits import SharedLimits
from sesmail_gateway.smtp.server import bind_socket
from tests.dnsserver import TestDNSServer
from tests.helpers import wait_for

MESSAGE = b"From: alice@sender.test\r\nTo: bob@example.test\r\nSubject: hello\r\n\r\nbody\r\n"


def make_config(tmp_path: Path, dns: str) -> Config:
    return load_mapping({
        "gateway": {"hostname": "mx.test", "domains": ["example.test"], "data_dir": str(tmp_path / "data")},
        "rules": {"cache_seconds": 300},
        "checks": {"dns_servers": [dns], "dns_timeout": 0.5, "dmarc": "monitor"},
    })


@dataclass
class Built:
    """What the daemon with one SMTP worker builds, and what one worker process builds, from one config."""

    delivery: DeliverySide
    daemon: SmtpSide
    worker: WorkerSide
    pipe: Connection  # the daemon's end of the worker's pipe


@pytest.fixture
async def built(tmp_path: Path, dns_server: TestDNSServer) -> AsyncIterator[Built]:
    config = make_config(tmp_path, dns_server.address)
    metrics = Metrics()
    delivery = build_delivery_side(config, metrics)
    daemon = build_smtp_side(config, spool=delivery.spool, store=delivery.store, metrics=metrics)
    pipe, worker_end = multiprocessing.Pipe(duplex=False)
    limits = SharedLimits(max_connections=10, max_per_ip=10, slots=1, context=multiprocessing.get_context("fork"))
    worker = build_worker_side(config, MetricsRelay(worker_end), limits.bind(0))
    yield Built(delivery, daemon, worker, pipe)
    await worker.spool.close()
    await delivery.spool.close()
    worker.store.close()
    delivery.store.close()
    pipe.close()
    worker_end.close()


def test_01_both_sides_wire_the_handler_to_their_own_spool_resolver_and_inspector(built: Built) -> None:
    for side, spool in ((built.daemon, built.delivery.spool), (built.worker.smtp, built.worker.spool)):
        assert side.server.handler is side.handler
        assert side.handler.spool is spool
        assert side.handler.resolver is side.resolver
        assert side.handler.inspector is side.inspector
    assert built.daemon.resolver.store is built.delivery.store
    assert built.worker.smtp.resolver.store is built.worker.store
    # The daemon sweeps and delivers from the journal; a worker only journals, and tells the daemon.
    assert built.delivery.spool.checkpoints.sweeper and not built.worker.spool.checkpoints.sweeper
    assert built.delivery.spool.on_accepted == built.delivery.runner.accept
    # The worker opens its own connection to the rule store the daemon seeded on first start.
    assert built.worker.store is not built.delivery.store
    assert [route(side, "bob@example.test") for side in (built.daemon, built.worker.smtp)] == ["*", "*"]


def send(port: int) -> str:
    """One message over SMTP; the queue id from the 250."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("alice@sender.test")
        client.rcpt("bob@example.test")
        code, reply = client.data(MESSAGE)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


async def serve(side: SmtpSide) -> int:
    sock = bind_socket("127.0.0.1:0")
    bound = await side.server.start([sock])
    return bound[0][1]


def delivered(config: Config) -> list[bytes]:
    return [path.read_bytes() for path in (config.data_dir / "mail" / "new").glob("*")]


async def until(predicate: Callable[[], Any]) -> Any:
    """``wait_for`` off the loop, which goes on serving SMTP and delivering meanwhile."""
    return await asyncio.to_thread(wait_for, predicate, 20.0)


async def test_02_mail_accepted_by_the_daemon_and_by_a_worker_is_delivered_by_the_one_runner(built: Built) -> None:
    runner = built.delivery.runner
    config = built.daemon.handler.config
    await runner.start()
    daemon_port, worker_port = await serve(built.daemon), await serve(built.worker.smtp)
    try:
        await asyncio.to_thread(send, daemon_port)
        await until(lambda: len(delivered(config)) == 1)
        worker_queue_id = await asyncio.to_thread(send, worker_port)
        # The worker journals the message and sends its record over the pipe; the daemon's runner takes it.
        kind, events = await until(lambda: built.pipe.poll() and built.pipe.recv())
        assert kind == "events"
        records = [args for name, args in events if name == "accepted"]
        assert len(records) == 1 and worker_queue_id.encode() in records[0][0]
        runner.accept_record(*records[0])
        messages = await until(lambda: len(found := delivered(config)) == 2 and found)
        assert all(message.endswith(MESSAGE) for message in messages)
    finally:
        await built.daemon.drain(timeout=5)
        await built.worker.smtp.drain(timeout=5)
        await runner.stop()
    # Drained: the checks' threads are released, so a check asked for now is refused, not run.
    for side in (built.daemon, built.worker.smtp):
        with pytest.raises(RuntimeError, match="shutdown"):
            await side.inspector.inspect(b"Subject: x\r\n\r\nbody\r\n", ip="127.0.0.1", helo="h", mail_from="")


def route(side: SmtpSide, address: str) -> str | None:
    rule = side.resolver.resolve_sync(address).rule
    return rule.pattern if rule is not None else None


def spf_record(side: SmtpSide, domain: str) -> list[str]:
    return side.inspector.resolver.txt(domain).texts


def test_03_reload_forgets_cached_routes_and_dns_answers(built: Built, dns_server: TestDNSServer) -> None:
    dns_server.add("sender.test", "TXT", "v=spf1 -all")
    sides = (built.daemon, built.worker.smtp)
    for side in sides:
        assert route(side, "bob@example.test") == "*"
        assert spf_record(side, "sender.test") == ["v=spf1 -all"]
    built.delivery.store.put(Rule(pattern="bob@example.test", actions=(Action("maildir", "bob"),)))
    dns_server.remove("sender.test", "TXT")
    dns_server.add("sender.test", "TXT", "v=spf1 ?all")
    for side in sides:  # cached: the answers from before the change
        assert route(side, "bob@example.test") == "*"
        assert spf_record(side, "sender.test") == ["v=spf1 -all"]
    for side in sides:
        side.reload()
        assert route(side, "bob@example.test") == "bob@example.test"
        assert spf_record(side, "sender.test") == ["v=spf1 ?all"]
