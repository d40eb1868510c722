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

from sesmail_gateway import sdnotify
from sesmail_gateway.archive import Archiver
from sesmail_gateway.archive.local import FolderArchiver
from sesmail_gateway.checks.inspector import Inspector
from sesmail_gateway.config import Config, ConfigError
from sesmail_gateway.control import ControlServer
from sesmail_gateway.deliver import Deliverer
from sesmail_gateway.deliver.bounce import RuleBounce
from sesmail_gateway.deliver.gmail import GmailDeliverer
from sesmail_gateway.deliver.maildir import MaildirDeliverer
from sesmail_gateway.fsutil import FilesystemSync, ensure_dir
from sesmail_gateway.metrics import Metrics, MetricsServer
from sesmail_gateway.routes import Action, RouteStore, Rule
from sesmail_gateway.routes.factory import open_route_store
from sesmail_gateway.routes.records import utc_now
from sesmail_gateway.routes.resolver import RouteResolver
from sesmail_gateway.runner import Runner
from sesmail_gateway.smtp.handler import GatewayHandler
from sesmail_gateway.smtp.server import SMTPServer
from sesmail_gateway.spool import Spool, run_checkpoints
from sesmail_gateway.tokens import ClientCredentials, TokenStore
from sesmail_gateway.tokens.factory import load_client, open_token_store
from sesmail_gateway.tokens.watcher import TokenWatcher
from sesmail_gateway.workers import WorkerPool, worker_count

log = logging.getLogger(__name__)

DEFAULT_MAILDIR = "mail"


def open_archiver(config: Config, fs: FilesystemSync) -> Archiver:
    scheme, _, rest = config.archive.url.partition("://")
    if scheme == "file":
        return FolderArchiver(config.data_path(rest or "archive"), fs)
    raise ConfigError(f"archive.url: the {scheme}:// archive is not available in this version")


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


def build_deliverers(config: Config, fs: FilesystemSync, gmail: GmailDeliverer) -> Mapping[str, Deliverer]:
    return {
        "maildir": MaildirDeliverer(config.data_dir, fs),
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

    def __init__(self, config: Config) -> None:
        self.config = config
        ensure_dir(config.data_dir)
        self.metrics = Metrics()
        self.spool = Spool(config.data_dir / "spool", on_commit=self.metrics.observe_commit, sweeper=True)
        self.metrics.track_queue(self.spool.counts)
        self.store = open_route_store(config)
        seed_default_route(self.store, config)
        self.resolver = RouteResolver(self.store, cache_seconds=config.rules.cache_seconds)
        self.gmail, token_store = open_gmail(config, self.metrics)
        self.runner = Runner(
            spool=self.spool, archiver=open_archiver(config, self.spool.fs),
            deliverers=build_deliverers(config, self.spool.fs, self.gmail),
            config=config.delivery, metrics=self.metrics,
        )
        self.tokens = TokenWatcher(store=token_store, deliverer=self.gmail, runner=self.runner,
                                   config=config.gmail, metrics=self.metrics)
        self.control = ControlServer(config.data_dir, {"reload-tokens": self._reload_tokens})
        self.spool.on_ready = self.runner.notify
        # One worker: SMTP runs in this process. More: worker processes share the port.
        self.smtp: SMTPServer | None = None
        self.pool: WorkerPool | None = None
        self.inspector: Inspector | None = None
        if worker_count(config) == 1:
            self.inspector = Inspector(config=config.checks, hostname=config.gateway.hostname)
            handler = GatewayHandler(config=config, resolver=self.resolver, spool=self.spool, metrics=self.metrics,
                                     inspector=self.inspector)
            self.smtp = SMTPServer(config, handler)
        else:
            self.pool = WorkerPool(config, self.metrics, on_queued=self.runner.notify)
        self.metrics_server: MetricsServer | None = None
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
        return True, f"queue {self.spool.counts()}"

    async def start(self) -> None:
        await self.runner.start()
        self._checkpoints = asyncio.create_task(run_checkpoints(self.spool))
        self._token_watch = asyncio.create_task(self.tokens.run())
        await self.control.start()
        if self.smtp is not None:
            self.bound = await self.smtp.start()
        if self.pool is not None:
            await self.pool.start(abort=self._stop)
        if self.config.metrics.listen:
            self.metrics_server = MetricsServer(self.metrics, self.config.metrics.listen, self.healthy)
            self.metrics_server.start()

    async def _reload_tokens(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control command from `token import` / `token refresh`: re-read the token store now."""
        released = await self.tokens.check()
        return {"ok": True, "released": released}

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
        log.info("gateway %s ready: smtp %s (%d worker(s)), data %s", self.config.gateway.hostname,
                 ", ".join(self.config.smtp.listen), worker_count(self.config), self.config.data_dir)
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
    asyncio.run(Gateway(config).run())
    return 0

