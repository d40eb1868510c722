"""Composition root: config → stores → spool → runner + SMTP server; signals and sd_notify.

Only this module chooses implementations (SQLite or DynamoDB, folder or S3,
Maildir or Gmail); everything else sees the small protocols.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any

from sesmail_gateway import aws, control, eventloop, sdnotify
from sesmail_gateway.archive import Archiver
from sesmail_gateway.archive.local import FolderArchiver
from sesmail_gateway.archive.s3 import S3Archiver
from sesmail_gateway.bounce import Bouncer
from sesmail_gateway.bounce.ses import SesSender
from sesmail_gateway.checks.inspector import Inspector
from sesmail_gateway.cloudwatch import CloudWatchPublisher
from sesmail_gateway.config import Config, ConfigError
from sesmail_gateway.control import ControlServer
from sesmail_gateway.deliver import Deliverer
from sesmail_gateway.deliver.bounce import RuleBounce
from sesmail_gateway.deliver.gmail import GmailDeliverer
from sesmail_gateway.deliver.maildir import MaildirDeliverer
from sesmail_gateway.fsutil import PendingSyncs, ensure_dir
from sesmail_gateway.metrics import Metrics, MetricsServer
from sesmail_gateway.queue_ops import QueueOpError
from sesmail_gateway.routes import Action, RouteStore, Rule
from sesmail_gateway.routes.factory import open_route_store
from sesmail_gateway.routes.records import utc_now
from sesmail_gateway.routes.resolver import RouteResolver
from sesmail_gateway.runner import Runner
from sesmail_gateway.scan.factory import build_scanning
from sesmail_gateway.smtp.handler import GatewayHandler
from sesmail_gateway.smtp.server import SMTPServer
from sesmail_gateway.spool import Spool, run_checkpoints
from sesmail_gateway.tokens import ClientCredentials, TokenStore
from sesmail_gateway.tokens.factory import load_client, open_token_store
from sesmail_gateway.tokens.watcher import TokenWatcher
from sesmail_gateway.workers import Forks, WorkerPool, worker_count

log = logging.getLogger(__name__)

DEFAULT_MAILDIR = "mail"


def open_archiver(config: Config, syncs: PendingSyncs) -> Archiver:
    scheme, _, rest = config.archive.url.partition("://")
    if scheme == "file":
        return FolderArchiver(config.data_path(rest or "archive"), syncs)
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"archive.url: expected s3://BUCKET/PREFIX, got {config.archive.url!r}")
        return S3Archiver(bucket, prefix, aws_config=config.aws, kms_key_id=config.archive.kms_key_id)
    raise ConfigError(f"archive.url: the {scheme}:// archive is not available in this version")


def open_bouncer(config: Config, spool: Spool) -> Bouncer | None:
    """With ``bounce.mode = "dsn"``, dead letters may earn a DSN sent through SES."""
    if config.bounce.mode != "dsn":
        return None
    if not (config.aws.region or config.aws.endpoint_url or aws.default_region()):
        # The local default: the dead-letter record carries the reason; nothing is sent.
        log.warning("bounce.mode = dsn without an AWS region (aws.region): DSNs are not sent through SES; "
                    "dead letters keep the reason")
        return None
    return Bouncer(sender=SesSender(config.aws), from_address=config.bounce.sender,
                   reporting_mta=config.gateway.hostname, message_path=spool.message_path)


def open_gmail(config: Config, metrics: Metrics) -> tuple[GmailDeliverer, TokenStore]:
    store = open_token_store(config)

    def client() -> ClientCredentials | None:
        return load_client(config, store)

    deliverer = GmailDeliverer(
        store=store, client=client, label_ids=config.gmail.label_ids, api_endpoint=config.gmail.api_endpoint,
        token_uri=config.gmail.token_uri,
        on_import=lambda account, seconds: metrics.gmail_import_seconds.observe(seconds),
    )
    return deliverer, store


def build_deliverers(config: Config, syncs: PendingSyncs, gmail: GmailDeliverer) -> Mapping[str, Deliverer]:
    return {
        "maildir": MaildirDeliverer(config.data_dir, syncs),
        "bounce": RuleBounce(),
        "forward-to-gmail": gmail,
    }


def seed_default_route(store: RouteStore, config: Config) -> bool:
    """On the embedded SQLite store, an empty rule table gets ``*`` → Maildir ``mail/``."""
    if not config.rules.url.startswith("sqlite://") or store.list():
        return False
    now = utc_now()
    store.put(Rule(pattern="*", actions=(Action("maildir", DEFAULT_MAILDIR),),
                   description="catch-all seeded on first start", created_at=now, updated_at=now))
    log.info("routes: empty rule table; seeded catch-all * -> maildir %s", DEFAULT_MAILDIR)
    return True


class Gateway:
    """The daemon: everything wired together, started and stopped as one."""

    def __init__(self, config: Config, forks: Forks | None = None) -> None:
        self.config = config
        ensure_dir(config.data_dir)
        # Before anything else touches the data dir: one daemon per spool.
        self._lock_fd = control.lock_data_dir(config.data_dir)
        self.metrics = Metrics()
        # Then the sockets, so a taken port stops start-up before anything touches the spool.
        self.metrics_server: MetricsServer | None = None
        if config.metrics.listen:
            try:
                self.metrics_server = MetricsServer(self.metrics, config.metrics.listen, self.healthy)
            except OSError as exc:
                raise ConfigError(f"metrics.listen: cannot listen on {config.metrics.listen}: "
                                  f"{exc.strerror}") from None
        self.spool = Spool(config.data_dir / "spool", on_commit=self.metrics.observe_commit, sweeper=True)
        self.metrics.track_queue(self.spool.counts)
        self.store = open_route_store(config)
        seed_default_route(self.store, config)
        self.resolver = RouteResolver(self.store, cache_seconds=config.rules.cache_seconds)
        self.gmail, token_store = open_gmail(config, self.metrics)
        self.runner = Runner(
            spool=self.spool, archiver=open_archiver(config, self.spool.syncs),
            deliverers=build_deliverers(config, self.spool.syncs, self.gmail),
            config=config.delivery, metrics=self.metrics, bouncer=open_bouncer(config, self.spool),
        )
        self.metrics.track_destinations(self.runner.destinations.status)
        self.tokens = TokenWatcher(store=token_store, deliverer=self.gmail, runner=self.runner,
                                   config=config.gmail, metrics=self.metrics)
        self.control = ControlServer(config.data_dir, {"reload-tokens": self._reload_tokens, "queue": self._queue_op})
        self.spool.on_ready = self.runner.notify
        # Accepted messages go from the journal straight to the runner; the runner retires the segments.
        self.spool.on_accepted = self.runner.accept
        self.spool.on_sealed = self.spool.segments.sealed
        # One worker: SMTP runs in this process. More: worker processes share the port.
        self.smtp: SMTPServer | None = None
        self.pool: WorkerPool | None = None
        self.inspector: Inspector | None = None
        if worker_count(config) == 1:
            self.inspector = Inspector(config=config.checks, hostname=config.gateway.hostname)
            handler = GatewayHandler(config=config, resolver=self.resolver, spool=self.spool, metrics=self.metrics,
                                     inspector=self.inspector,
                                     scanning=build_scanning(config, observe=self.metrics.scan_result))
            self.smtp = SMTPServer(config, handler)
        else:
            # serve() forks the fork server before anything is open; one forked here would inherit the lock.
            self.pool = WorkerPool(config, self.metrics, on_queued=self.runner.notify,
                                   on_accepted=self.runner.accept_record, on_sealed=self.spool.segments.sealed,
                                   on_died=self.runner.adopt, forks=forks or Forks.start(config),
                                   on_lost=self.request_stop)
        self.cloudwatch: CloudWatchPublisher | None = None
        self._stop = asyncio.Event()
        self._checkpoints: asyncio.Task[None] | None = None
        self._token_watch: asyncio.Task[None] | None = None
        self.bound: list[tuple[str, int]] = []

    def healthy(self) -> tuple[bool, str]:
        if self.smtp is not None and not self.smtp.listening:
            return False, "smtp not listening"
        if self.pool is not None and not self.pool.healthy:
            return False, "smtp worker(s) down"
        if not os.access(self.spool.root / "tmp", os.W_OK):
            return False, "spool not writable"
        if hung := self.runner.hung():
            queue_id, seconds = max(hung.items(), key=lambda entry: entry[1])
            return False, f"delivery of {queue_id} hung for {seconds:.0f} s"
        if self.spool.syncs.failed is not None:
            return False, f"spool fsync failed ({self.spool.syncs.failed.strerror}): journals kept for a restart"
        return True, f"queue {self.spool.counts()}"

    async def start(self) -> None:
        await self.control.start()
        await self.runner.start()  # recovery, then delivery
        self._checkpoints = asyncio.create_task(run_checkpoints(self.spool))
        self._token_watch = asyncio.create_task(self.tokens.run())
        if self.smtp is not None:
            self.bound = await self.smtp.start()
        if self.pool is not None:
            await self.pool.start(abort=self._stop)
        if self.metrics_server is not None:
            self.metrics_server.start()
        if self.config.metrics.cloudwatch_namespace:
            self.cloudwatch = CloudWatchPublisher(self.metrics.registry, self.config.metrics.cloudwatch_namespace,
                                                  aws_config=self.config.aws)
            self.cloudwatch.start()

    async def _reload_tokens(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control command from `token import` / `token refresh`: re-read the token store now."""
        released = await self.tokens.check()
        return {"ok": True, "released": released}

    async def _queue_op(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control command from `queue retry|delete|release`."""
        try:
            message = await self.runner.operate(str(request.get("action", "")), str(request.get("id") or ""),
                                                every=bool(request.get("all")))
        except QueueOpError as exc:
            return {"ok": False, "error": str(exc)}
        except OSError as exc:
            return {"ok": False, "error": f"spool: {exc.strerror or exc}"}
        return {"ok": True, "message": message}

    def reload(self) -> None:
        """SIGHUP: forget cached routes and re-read the token store."""
        self.tokens.wake()
        self.resolver.invalidate()
        if self.inspector is not None:
            self.inspector.invalidate()
        if self.pool is not None:
            self.pool.signal_all(signal.SIGHUP)
        log.info("reload: rule and DNS caches cleared, token store re-read")

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        sdnotify.notify("STOPPING=1")
        log.info("shutdown: draining SMTP sessions")
        if self.smtp is not None:
            await self.smtp.drain(timeout=self.config.smtp.data_timeout)
        if self.pool is not None:
            await self.pool.stop()
        await self.control.stop()
        if self._token_watch is not None:
            self._token_watch.cancel()
        await self.runner.stop()
        if self._checkpoints is not None:
            self._checkpoints.cancel()
        await self.spool.close()
        if self.metrics_server:
            self.metrics_server.stop()
        if self.cloudwatch is not None:  # one last publish, off the loop
            await asyncio.to_thread(self.cloudwatch.stop)
        self.store.close()
        log.info("shutdown: done")

    async def run(self) -> None:
        # Handlers first: a SIGTERM during start-up (workers still starting) is a clean stop too.
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        await self.start()
        sdnotify.notify("READY=1")
        log.info("gateway %s ready: smtp %s (%d worker(s)), data %s, %s event loop", self.config.gateway.hostname,
                 ", ".join(self.config.smtp.listen), worker_count(self.config), self.config.data_dir,
                 eventloop.name())
        watchdog = asyncio.create_task(self._watchdog())
        await self._stop.wait()
        watchdog.cancel()
        await self.stop()

    async def _watchdog(self) -> None:
        interval = sdnotify.watchdog_interval()
        if interval is None:
            return
        while True:
            if self.healthy()[0]:
                sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)


def serve(config: Config) -> int:
    # The SMTP workers' fork server first, while this process is one thread (see forkserver.py).
    gateway = Gateway(config, Forks.start(config) if worker_count(config) > 1 else None)
    eventloop.run(gateway.run())
    return 1 if gateway.pool is not None and gateway.pool.lost else 0

