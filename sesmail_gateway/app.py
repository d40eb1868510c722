"""The daemon: data-dir lock, sockets, start and stop order, signals, health, sd_notify.

What it runs is built in ``compose`` (the composition root); this module
keeps the life cycle.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from typing import Any

from sesmail_gateway import control, sdnotify
from sesmail_gateway.cloudwatch import CloudWatchPublisher
from sesmail_gateway.compose import SmtpSide, build_delivery_side, build_smtp_side
from sesmail_gateway.config import Config, ConfigError
from sesmail_gateway.control import ControlServer
from sesmail_gateway.fsutil import ensure_dir
from sesmail_gateway.metrics import Metrics, MetricsServer
from sesmail_gateway.queue_ops import QueueOpError
from sesmail_gateway.smtp.server import bind_socket
from sesmail_gateway.spool import run_checkpoints
from sesmail_gateway.workers import Forks, WorkerPool, worker_count

log = logging.getLogger(__name__)


class Gateway:
    """The daemon: what compose builds, started, watched and stopped as one."""

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
        # The SMTP sockets: served here with one worker, else handed to each worker process. A bind that
        # fails names its smtp.listen address; `serve` tells a setting to fix (exit 2) from a port still
        # taken, which a restart may cure.
        self.listening: list[socket.socket] = []
        for address in config.smtp.listen:
            try:
                self.listening.append(bind_socket(address))
            except OSError:
                self._close_listening()
                raise
        self.bound = [(str(name[0]), int(name[1])) for name in (s.getsockname() for s in self.listening)]
        delivery = build_delivery_side(config, self.metrics)
        self.spool = delivery.spool
        self.store = delivery.store
        self.runner = delivery.runner
        self.tokens = delivery.tokens
        self.control = ControlServer(config.data_dir, {"reload-tokens": self._reload_tokens, "queue": self._queue_op})
        # One worker: SMTP runs in this process. More: worker processes accept from the sockets above.
        self.smtp: SmtpSide | None = None
        self.pool: WorkerPool | None = None
        if worker_count(config) == 1:
            self.smtp = build_smtp_side(config, spool=self.spool, store=self.store, metrics=self.metrics)
        else:
            # serve() forks the fork server before anything is open; one forked here would inherit the lock.
            self.pool = WorkerPool(config, self.metrics, on_queued=self.runner.notify,
                                   on_accepted=self.runner.accept_record, on_sealed=self.spool.segments.sealed,
                                   on_died=self.runner.adopt, forks=forks or Forks.start(config),
                                   on_lost=self.request_stop, sockets=self.listening)
        self.cloudwatch: CloudWatchPublisher | None = None
        self._stop = asyncio.Event()
        self._checkpoints: asyncio.Task[None] | None = None
        self._token_watch: asyncio.Task[None] | None = None

    def _close_listening(self) -> None:
        for sock in self.listening:
            sock.close()
        self.listening.clear()

    def healthy(self) -> tuple[bool, str]:
        if self.smtp is not None and not self.smtp.server.listening:
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
            await self.smtp.server.start(self.listening)
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
        if self.smtp is not None:
            self.smtp.reload()
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
        self._close_listening()
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
    # The SMTP workers' fork server first, while this process is one thread (see forkserver.py).
    gateway = Gateway(config, Forks.start(config) if worker_count(config) > 1 else None)
    asyncio.run(gateway.run())
    return 1 if gateway.pool is not None and gateway.pool.lost else 0

