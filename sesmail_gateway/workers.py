"""SMTP worker processes: ``smtp.workers`` processes accept from the daemon's listening sockets.

Each worker runs SMTP sessions, route look-ups and checks, and writes into
the one spool (queue ids carry the pid, so they stay unique). The main
process keeps the runner, /metrics and the supervision: it restarts a
worker that dies, forwards SIGHUP, and on SIGTERM lets every worker drain.
Workers report metrics and queued ids to the main process over a pipe
(``relay.py``). A worker builds what it runs in the composition root
(``compose.build_worker_side``), with the SMTP side the one-worker daemon
builds too; this module keeps the life cycles.

Workers are forked by a fork server (``forkserver.py``) that the daemon
forks before it starts any thread, so they share the imported code and
data with it instead of importing everything again. The daemon binds the
listening sockets and hands them to each worker it forks; the workers share
the connections out between them (``smtp/server.py``), and a connection
that arrives while no worker runs waits in the socket's queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from sesmail_gateway.compose import build_worker_side
from sesmail_gateway.config import Config
from sesmail_gateway.forkserver import Child, ForkServer
from sesmail_gateway.metrics import Metrics
from sesmail_gateway.relay import APPLICABLE, MetricsRelay
from sesmail_gateway.smtp.limits import SharedLimits
from sesmail_gateway.spool import run_checkpoints

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.25


def worker_count(config: Config) -> int:
    return config.smtp.workers or os.cpu_count() or 1


def run_worker(config: Config, limits: SharedLimits, index: int, fds: list[int]) -> None:
    """Entry point of a worker process, forked by the fork server (logging is set up already).

    ``fds``: the write end of its pipe to the daemon, then the listening sockets."""
    pipe, *listening = fds
    sockets = [socket.socket(fileno=fd) for fd in listening]
    asyncio.run(_worker(config, index, Connection(pipe, readable=False), limits, sockets))


async def _worker(config: Config, index: int, conn: Connection, limits: SharedLimits,
                  sockets: list[socket.socket]) -> None:
    relay = MetricsRelay(conn)
    worker = build_worker_side(config, relay, limits.bind(index))
    smtp = worker.smtp
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the main process decides
    loop.add_signal_handler(signal.SIGHUP, smtp.reload)
    await smtp.server.start(sockets)
    conn.send(("ready", index))

    parent = os.getppid()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            with contextlib.suppress(OSError):  # a broken pipe: the main process is gone
                relay.flush(heartbeat=True)
            if os.getppid() != parent:  # the fork server, and so the main process, is gone (no PDEATHSIG)
                log.error("workers: main process gone; smtp worker %d stopping", index)
                stop.set()
                return

    flushing = asyncio.create_task(flusher())
    checkpoints = asyncio.create_task(run_checkpoints(worker.spool))
    await stop.wait()
    await smtp.drain(timeout=config.smtp.data_timeout)
    checkpoints.cancel()
    await worker.spool.close()
    flushing.cancel()
    with contextlib.suppress(OSError):
        relay.flush()
    worker.store.close()
    conn.close()


class Forks(NamedTuple):
    """The workers' fork server and their shared connection counts, both made before the daemon's first thread."""

    server: ForkServer
    limits: SharedLimits

    @classmethod
    def start(cls, config: Config) -> Forks:
        """Call first thing in the daemon, while it is one thread with nothing open (see forkserver.py)."""
        limits = SharedLimits(max_connections=config.smtp.max_connections,
                              max_per_ip=config.smtp.max_connections_per_ip, slots=worker_count(config),
                              context=multiprocessing.get_context("fork"))
        return cls(ForkServer.start(functools.partial(run_worker, config, limits), child_name="sesmail-smtp"), limits)


class WorkerPool:
    """Starts, watches and stops the worker processes.

    If the fork server is gone, no worker can be started any more: ``lost``
    is set and ``on_lost`` asks the daemon to stop, for the service manager
    to start it afresh.
    """

    def __init__(
        self, config: Config, metrics: Metrics, on_queued: Callable[[str], None], *,
        on_accepted: Callable[[bytes, str, int], None], on_sealed: Callable[[str, bool, int], None],
        on_died: Callable[[int], Awaitable[int]], forks: Forks, on_lost: Callable[[], None],
        sockets: list[socket.socket],
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.on_queued = on_queued
        self.on_accepted = on_accepted
        self.on_sealed = on_sealed
        self.on_died = on_died
        self.on_lost = on_lost
        self.sockets = sockets  # the listening sockets, handed to every worker
        self.count = worker_count(config)
        self.limits = forks.limits
        self._server = forks.server
        self.lost = False
        self._procs: dict[int, tuple[Child, Connection]] = {}
        self._ready: set[int] = set()
        self._heard: dict[int, float] = {}  # index -> monotonic time of its last message (events or heartbeat)
        self._all_ready = asyncio.Event()
        self._stopping = False
        self._watch: asyncio.Task[None] | None = None

    async def start(self, abort: asyncio.Event, timeout: float = 60.0) -> None:
        """Start every worker; return when all are listening, or ``abort`` is set, or after ``timeout``.

        The supervisor runs from the start, so a worker that dies while starting is replaced.
        """
        for index in range(self.count):
            self._spawn(index)
        self._watch = asyncio.create_task(self._supervise())
        waits = [asyncio.create_task(self._all_ready.wait()), asyncio.create_task(abort.wait())]
        done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if not done:
            log.error("workers: only %d of %d smtp workers ready after %.0fs; still trying",
                      len(self._ready), self.count, timeout)

    def _spawn(self, index: int) -> None:
        self.limits.reset(index)  # a dead predecessor's sessions are gone
        parent, child = multiprocessing.Pipe(duplex=False)
        try:
            proc = self._server.fork(index, [child.fileno(), *(sock.fileno() for sock in self.sockets)])
        except OSError as exc:
            parent.close()
            self._procs.pop(index, None)
            self.lost = True
            log.error("workers: the fork server is gone (%s); stopping so that the gateway is started afresh", exc)
            self.on_lost()
            return
        finally:
            child.close()
        self._procs[index] = (proc, parent)
        self._heard[index] = time.monotonic()
        asyncio.get_running_loop().add_reader(parent.fileno(), self._receive, index, parent)

    def _receive(self, index: int, conn: Connection) -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            return
        self._heard[index] = time.monotonic()
        self._handle(index, message)

    def _handle(self, index: int, message: tuple[str, Any]) -> None:
        kind, payload = message
        if kind == "ready":
            self._ready.add(index)
            if len(self._ready) == self.count:
                self._all_ready.set()
            return
        for name, args in payload:
            if name == "accepted":
                self.on_accepted(*args)
            elif name == "sealed":
                self.on_sealed(*args)
            elif name == "queued":
                self.on_queued(args[0])
            elif name in APPLICABLE:
                getattr(self.metrics, name)(*args)

    async def _supervise(self) -> None:
        while not self._stopping:
            await asyncio.sleep(1.0)
            for index, (proc, conn) in list(self._procs.items()):
                if self._stopping:
                    break
                if proc.is_alive():
                    self._kill_if_frozen(index, proc, conn)
                    continue
                log.error("workers: smtp worker %d exited; restarting", index)  # the fork server logs its status
                self._ready.discard(index)
                self._drain(conn)  # what it reported before it died, then what its journals hold
                conn.close()
                proc.close()
                adopted = await self.on_died(proc.pid)
                if adopted:
                    log.warning("workers: %d message(s) from smtp worker %d's journal delivered from there",
                                adopted, index)
                self._spawn(index)

    def _kill_if_frozen(self, index: int, proc: Child, conn: Connection) -> None:
        """A running worker silent for ``smtp.worker_timeout`` (its event loop stuck) is killed: the next
        turn of the supervisor finds it dead, delivers what its journal holds and starts another."""
        silent = time.monotonic() - self._heard[index]  # set when it was forked
        if index not in self._ready or silent <= self.config.smtp.worker_timeout or conn.poll():
            return  # still starting (the start-up wait reports that), or alive, or its news not read yet
        log.error("workers: smtp worker %d (pid %d) sent nothing for %.0f s and is taken as frozen; killing it",
                  index, proc.pid, silent)
        proc.kill()

    @property
    def healthy(self) -> bool:
        return len(self._ready) == self.count and all(p.is_alive() for p, _ in self._procs.values())

    def signal_all(self, signum: int) -> None:
        for proc, _ in self._procs.values():
            if proc.is_alive():
                proc.send_signal(signum)

    async def stop(self) -> None:
        """SIGTERM every worker (each drains its sessions), wait for them, then let the fork server go."""
        self._stopping = True
        if self._watch:
            self._watch.cancel()
        self.signal_all(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        for proc, conn in self._procs.values():
            await loop.run_in_executor(None, proc.join, self.config.smtp.data_timeout + 5)
            if proc.is_alive():
                proc.kill()
            loop.remove_reader(conn.fileno())
            self._drain(conn)  # apply what the worker sent last before it exited
            conn.close()
            proc.close()
        await loop.run_in_executor(None, self._server.close)

    def _drain(self, conn: Connection) -> None:
        with contextlib.suppress(ValueError):  # closed already
            asyncio.get_running_loop().remove_reader(conn.fileno())
        try:
            while conn.poll():
                self._handle(-1, conn.recv())
        except (EOFError, OSError):
            pass
